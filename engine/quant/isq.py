"""In-situ quantization (ISQ): float weights quantized to GGUF blocks while a model loads.

``quant=q4_k`` (or ``quant=4``) turns each float 2-D linear weight the loader hands over into a
``RawTensor`` of GGUF blocks, which then takes the same path as a GGUF file's quantized weights
(``packed_weight``: the C++ kernel on CPU, blocks on GPUs). What is quantized, and to what:

* only the weights of ``Linear`` layers (and, with ``quant.embeddings=true``, the token embeddings
  and the output head); norms, biases and other 1-D tensors stay float, and so does an MoE router
  (llama.cpp's quantizer leaves ``ffn_gate_inp`` alone too);
* the token embeddings and the output head (and a head tied to the embeddings) stay float unless
  ``quant.embeddings=true``, as mistral.rs keeps them at higher precision;
* tensors already quantized to another type are *requantized* from their dequantized values (as
  llama.cpp's ``--allow-requantize`` does; a warning says so, since quantizing twice loses more than
  quantizing the float original once); tensors already of the asked-for type are kept as they are;
* a K-type needs rows of whole 256-element super-blocks; other tensors get llama.cpp's fallback
  (quantize_types.LLAMA_CPP_FALLBACK), or stay float when even that does not fit.

The load log says which tensor got which type (INFO) and ends with a one-line summary.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any

import torch

from mistralrs.engine.formats.checkpoint import RawTensor
from mistralrs.engine.quant.dequant import dequantize
from mistralrs.engine.quant.quantize import quantize, single_threaded
from mistralrs.engine.quant.quantize_types import isq_target_type, isq_types, resolve_isq_type
from mistralrs.engine.quant.weights import FLOAT_TYPES
from mistralrs.registry import registries

log = logging.getLogger(__name__)


class InSituQuantizer:
    """Quantizes the loader's float weights to one GGML type (with llama.cpp's fallbacks)."""

    def __init__(self, qtype: str, *, embeddings: bool = False, device: torch.device | None = None):
        if qtype not in isq_types():
            raise ValueError(f"in-situ quantization cannot produce {qtype!r}")
        self.qtype = qtype
        self.block_size = registries().quant_types.get(qtype).block_size
        self.embeddings = embeddings
        # Quantize where the weights will live when that is an accelerator (much faster there).
        self.work_device = device if device is not None and device.type == "cuda" else torch.device("cpu")
        self.counts: Counter[str] = Counter()
        self.seconds = 0.0
        self.requantized = False  # warned once that quantized tensors are being requantized

    @classmethod
    def from_config(cls, cfg: Any, device: torch.device | None = None) -> "InSituQuantizer | None":
        """From a ``QuantConfig`` (or None): None when it asks for no quantization."""
        if cfg is None:
            return None
        qtype = resolve_isq_type(getattr(cfg, "type", None))
        if qtype is None:
            return None
        return cls(qtype, embeddings=bool(getattr(cfg, "embeddings", False)), device=device)

    def __call__(self, target: str, raw: RawTensor, role: str) -> RawTensor:
        """``raw`` quantized when ISQ applies to it, else ``raw`` itself (the reason logged)."""
        if role == "other" or len(raw.shape) != 2:
            return raw
        if raw.qtype == self.qtype:
            self.counts[f"{raw.qtype} (already that type)"] += 1
            log.info("ISQ: %s is %s in the checkpoint already; kept as it is", target, raw.qtype)
            return raw
        if role == "router" or (role == "embedding" and not self.embeddings):
            self.counts[f"{raw.qtype} (kept float)"] += 1
            why = "MoE router" if role == "router" else "embeddings/output head (quant.embeddings=false)"
            log.info("ISQ: %s kept %s: %s", target, raw.qtype, why)
            return raw
        rows, cols = raw.shape
        qtype = isq_target_type(self.qtype, cols)
        if qtype is None:
            self.counts[f"{raw.qtype} (kept float, no fitting type)"] += 1
            log.info("ISQ: %s kept %s: rows of %d are not a multiple of %d (%s) nor of its fallback's block",
                     target, raw.qtype, cols, self.block_size, self.qtype)
            return raw
        if raw.qtype not in FLOAT_TYPES and not self.requantized:
            self.requantized = True
            log.warning("quant=%s over a checkpoint already quantized (%s, ...): requantizing from the dequantized "
                        "weights, which loses more than quantizing float weights once; for the best quality give a "
                        "float source (safetensors or an F16/F32 GGUF), or leave quant=none to run the file's own types",
                        self.qtype, raw.qtype)
        start = time.perf_counter()
        with single_threaded(self.work_device):
            weight = self._float(raw)
            if not bool(torch.isfinite(weight).all()):
                raise ValueError(f"{target}: weight {raw.name!r} holds NaN or infinite values; cannot quantize it")
            data = quantize(weight, qtype)
        self.seconds += time.perf_counter() - start
        if raw.qtype not in FLOAT_TYPES:
            self.counts[f"{qtype} (requantized from {raw.qtype})"] += 1
            log.info("ISQ: %s [%d x %d] %s -> %s (requantized)", target, rows, cols, raw.qtype, qtype)
        elif qtype != self.qtype:
            self.counts[f"{qtype} (fallback)"] += 1
            log.info("ISQ: %s [%d x %d] -> %s: rows of %d are not a multiple of %d (%s); llama.cpp's fallback",
                     target, rows, cols, qtype, cols, self.block_size, self.qtype)
        else:
            self.counts[qtype] += 1
            log.info("ISQ: %s [%d x %d] -> %s", target, rows, cols, qtype)
        return RawTensor(raw.name, qtype, (rows, cols), data)

    def _float(self, raw: RawTensor) -> torch.Tensor:
        if raw.data.dtype != torch.uint8:
            t = raw.data.reshape(raw.shape)
        else:  # F16/BF16/F32 stored as bytes
            t = dequantize(raw.data, raw.qtype, raw.shape)
        return t.to(device=self.work_device)

    def summary(self) -> str:
        def order(kind: str) -> int:  # the asked-for type, its fallbacks, then what stayed as it was
            return 0 if kind == self.qtype else 1 if "fallback)" in kind else 2

        parts = ", ".join(f"{n} {kind}" for kind, n in sorted(self.counts.items(), key=lambda kv: (order(kv[0]), -kv[1])))
        return f"in-situ quantization to {self.qtype}: {parts or 'no tensors'}; {self.seconds:.2f}s quantizing"

    def log_summary(self) -> None:
        log.info("%s", self.summary())

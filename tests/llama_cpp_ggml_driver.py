"""Runs llama.cpp's ``convert_llama_ggml_to_gguf.py`` (from the llama-cpp-python sdist) on test files.

Run as a script, in its own process: the converter puts its bundled gguf-py first on sys.path.

    python llama_cpp_ggml_driver.py <llama.cpp dir> read <file>...            -> JSON list on stdout
    python llama_cpp_ggml_driver.py <llama.cpp dir> convert <in> <out> <gqa> <eps> <context>

``read`` reports what the converter's reader yields (or the error it raises) for each file.
``convert`` runs the whole conversion. Its one call that no longer fits the bundled gguf-py is
fixed: it hands ``GGUFWriter.add_tensor`` the raw bytes with an element shape, where gguf-py now
expects the byte shape of raw data (for F32 and F16 too, since the bytes arrive as uint8).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import SimpleNamespace


def _converter(llama_cpp: Path):
    spec = importlib.util.spec_from_file_location("convert_llama_ggml_to_gguf", llama_cpp / "convert_llama_ggml_to_gguf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read(conv, path: str) -> dict:
    import numpy as np

    model = conv.GGMLModel()
    try:
        model.load(np.memmap(path, mode="r"), 0)
    except Exception as exc:  # noqa: BLE001 - the error is the result
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    hp = model.hyperparameters
    return {
        "ok": True,
        "format": model.file_format.name,
        "version": model.format_version,
        "hparams": [hp.n_vocab, hp.n_embd, hp.n_mult, hp.n_head, hp.n_layer, hp.n_rot, int(hp.ftype)],
        "n_ff": int(hp.n_ff),
        "vocab": [[text.hex(), score] for text, score in model.vocab.items],
        "tensors": [
            {"name": t.name.decode(), "dims": list(t.dims), "type": t.dtype.name, "start": int(t.start_offset),
             "n_bytes": int(t.len_bytes)}
            for t in model.tensors
        ],
    }


def convert(conv, src: str, dst: str, gqa: str, eps: str, context: str) -> None:
    import numpy as np

    gguf = conv.gguf
    add_tensor = gguf.GGUFWriter.add_tensor

    def add_tensor_with_byte_shape(self, name, tensor, raw_shape=None, raw_dtype=None, **kw):
        if raw_dtype is not None and raw_shape is not None and tensor.dtype == np.uint8:
            raw_shape = gguf.quant_shape_to_byte_shape(raw_shape, raw_dtype)
        return add_tensor(self, name, tensor, raw_shape=raw_shape, raw_dtype=raw_dtype, **kw)

    gguf.GGUFWriter.add_tensor = add_tensor_with_byte_shape
    data = np.memmap(src, mode="r")
    model = conv.GGMLModel()
    model.load(data, 0)
    cfg = SimpleNamespace(input=Path(src), output=Path(dst), name="test", desc=None, gqa=int(gqa), eps=eps,
                          context_length=int(context))
    conv.GGMLToGGUF(model, data, cfg).save()


def main() -> None:
    llama_cpp, command, *args = sys.argv[1:]
    conv = _converter(Path(llama_cpp))
    if command == "read":
        json.dump([read(conv, p) for p in args], sys.stdout)
    else:
        convert(conv, *args)


if __name__ == "__main__":
    main()

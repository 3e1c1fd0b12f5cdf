"""Every decoder layer's decode step in one native call (engine/kernels/decode_stack.cpp).

A family describes each of its layers once (``DecodeLayerSpec``: which norms sit where, the fused
projections, heads, window, RoPE table, activation). When every layer qualifies (projections over
repacked quantized or float32 weights, with or without float32 biases, on the CPU), steps in which
each sequence decodes one token run the whole stack natively, adapters' low-rank terms included (engine/layers/low_rank.py);
anything else keeps the module path, which stays the reference the native one is tested against.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mistralrs.engine.kernels import native_ops
from mistralrs.engine.layers.attention import NATIVE_CACHE_DTYPES
from mistralrs.engine.layers.linear import Linear, LinearGroup, base_layer
from mistralrs.engine.layers.moe import SparseMoE
from mistralrs.engine.layers.norms import RMSNorm

ACTIVATIONS = {"silu": 0, "gelu_tanh": 1}
# Adapter factors as the native stack streams them over quantized weights, each step (bfloat16: half
# the bytes of float32). Over float32 weights (the exact reference mode, float models), in prefill and
# on the module path the adapters keep their own float32 factors.
ADAPTER_DTYPE = torch.bfloat16


@dataclass
class DecodeLayerSpec:
    """x += post_attn_norm(o(attention(rope(q_norm(q)), rope(k_norm(k)), v))), q/k/v = qkv(attn_norm(x));
    x += post_ffn_norm(down(act(gate) * up)), gate/up = gate_up(ffn_norm(x)), or with ``moe`` the sum of
    the routed experts' such MLPs (engine/layers/moe.py). Absent norms are identity."""

    attn_norm: RMSNorm
    ffn_norm: RMSNorm
    qkv: LinearGroup
    o: Linear
    gate_up: LinearGroup | None
    down: Linear | None
    heads: int
    kv_heads: int
    head_dim: int
    scale: float  # query scaling
    window: int | None  # sliding window (None: all positions)
    rope: int  # index into the model's RoPE tables of the step
    activation: str
    q_norm: RMSNorm | None = None
    k_norm: RMSNorm | None = None
    post_attn_norm: RMSNorm | None = None
    post_ffn_norm: RMSNorm | None = None
    moe: "SparseMoE | None" = None  # a sparse mixture in place of gate_up/down (which are then None)
    softcap: float | None = None  # attention logits -> softcap * tanh(logits / softcap) (Gemma 2)


DENSE = -1  # decode_stack.cpp's type code for a float32 weight


def _weight(layer: nn.Module):
    """(tensor, type code, rows) of a layer's weight as the native stack takes it, or None."""
    from mistralrs.engine.quant.weights import DenseWeight, RepackedWeight

    if type(layer) is not Linear:
        return None
    packed = layer.packed
    if isinstance(packed, RepackedWeight):
        return packed.packed, packed.type_id, packed.shape[0]
    dense = packed.tensor if isinstance(packed, DenseWeight) else layer.weight if packed is None else None
    if dense is not None and dense.dtype is torch.float32 and dense.device.type == "cpu" and dense.is_contiguous():
        return dense, DENSE, dense.shape[0]
    return None


def _projection(layers: list[nn.Module], group: LinearGroup | None):
    """(weights, types, rows, [(low-rank term, first output column)], bias or None) of layers sharing
    an input, or None. An adapter-wrapped layer shows its ``base_layer`` and its ``term``
    (engine/layers/low_rank.py); a fused group of packed weights has one term for all its members. The
    bias covers the whole output (zeros for members without one)."""
    bases = [base_layer(layer) for layer in layers]
    weights = [_weight(base) for base in bases]
    if any(w is None for w in weights) or any(b is not l and l.term is None for l, b in zip(layers, bases)):
        return None
    bias = _bias(bases, [w[2] for w in weights])
    if bias is False:
        return None
    plan = group.native_plan() if group is not None else None
    if plan is not None and plan[1] is not None:
        terms = [(plan[1], 0)]
    else:
        starts = [sum(w[2] for w in weights[:i]) for i in range(len(weights))]
        terms = [(layer.term, start) for layer, base, start in zip(layers, bases, starts) if layer is not base]
    return [w[0] for w in weights], [w[1] for w in weights], [w[2] for w in weights], terms, bias


def _experts(moe: SparseMoE):
    """((router weight, type, rows), [((gate/up weights, types, rows), (down weight, type, rows))]) of a
    mixture whose router and experts are plain, unadapted, unbiased linears; else None."""
    def plain(layers: list[nn.Module], group: LinearGroup | None):
        part = _projection(layers, group)
        if part is None or part[3] or part[4] is not None:  # adapter terms or biases: the module path
            return None
        return part[0], part[1], part[2]

    router = plain([moe.gate], None)
    experts = [(plain(list(e.gate_up.layers()), e.gate_up), plain([e.down_proj], None)) for e in moe.experts]
    if router is None or any(gu is None or d is None for gu, d in experts):
        return None
    return (router[0][0], router[1][0], router[2][0]), [(gu, (d[0][0], d[1][0], d[2][0])) for gu, d in experts]


def _bias(bases: list[nn.Module], rows: list[int]):
    """The members' biases as one float32 CPU vector, None without any, False if one cannot be used."""
    biases = [b.bias for b in bases]
    if all(b is None for b in biases):
        return None
    if any(b is not None and (b.dtype is not torch.float32 or b.device.type != "cpu") for b in biases):
        return False
    return torch.cat([b.detach().reshape(-1) if b is not None else torch.zeros(n) for b, n in zip(biases, rows)])


class DecodeStack:
    """The native stack, or None from :meth:`build` when some layer does not qualify."""

    def __init__(self, native, source=None) -> None:
        self.native = native
        self.source = source  # of the low-rank terms' column scales (``flat``), if any term has them

    @classmethod
    def build(cls, specs: list[DecodeLayerSpec | None]) -> DecodeStack | None:
        ops = native_ops()
        if ops is None or not specs or any(s is None for s in specs):
            return None
        norms = [n for s in specs for n in (s.attn_norm, s.ffn_norm, s.q_norm, s.k_norm, s.post_attn_norm, s.post_ffn_norm)
                 if n is not None]
        if len({n.eps for n in norms}) != 1 or any(s.activation not in ACTIVATIONS for s in specs):
            return None
        stack = torch.classes.mistralrs_kernels.DecodeStack()
        stack.set_eps(norms[0].eps)
        sources = {}
        for s in specs:
            experts = _experts(s.moe) if s.moe is not None else None
            parts = [_projection(list(s.qkv.layers()), s.qkv), _projection([s.o], None)]
            if s.moe is None:
                parts += [_projection(list(s.gate_up.layers()), s.gate_up), _projection([s.down], None)]
            if any(p is None for p in parts) or (s.moe is not None and experts is None):
                return None
            (qkv, qkv_t, qkv_n, *_), (o, o_t, o_n, *_) = parts[:2]
            (gu, gu_t, gu_n, *_), (down, down_t, down_n, *_) = parts[2:] or [([], [], []), ([torch.empty(0)], [DENSE], [0])]
            opt = [n.scale() if n is not None else None for n in (s.q_norm, s.k_norm, s.post_attn_norm, s.post_ffn_norm)]
            stack.add_layer(s.attn_norm.scale(), s.ffn_norm.scale(), *opt, qkv, qkv_t, qkv_n, o[0], o_t[0], o_n[0],
                            gu, gu_t, gu_n, down[0], down_t[0], down_n[0], s.heads, s.kv_heads, s.head_dim,
                            float(s.scale), s.window or 0, s.rope, ACTIVATIONS[s.activation], float(s.softcap or 0.0))
            if experts is not None:
                (router, router_t, router_n), expert_parts = experts
                stack.set_experts(router, router_t, router_n, s.moe.top_k, s.moe.normalize_top_k)
                for (egu, egu_t, egu_n), (edown, edown_t, edown_n) in expert_parts:
                    stack.add_expert(egu, egu_t, egu_n, edown, edown_t, edown_n)
            for which, (_, types, _, terms, bias) in enumerate(parts):
                if bias is not None:
                    stack.set_bias(which, bias.contiguous())
                factors = torch.float32 if DENSE in types else ADAPTER_DTYPE
                for term, shift in terms:
                    if term.offset is not None:
                        sources[id(term.source)] = term.source
                    stack.set_lora(which, term.at.to(factors), [bt.to(factors) for bt in term.bts],
                                   term.rank_starts, [c + shift for c in term.col_starts],
                                   -1 if term.offset is None else term.offset)
        if len(sources) > 1:  # one step hands every term the same column scales
            return None
        return cls(stack, next(iter(sources.values()), None))

    def __call__(self, x: torch.Tensor, ropes: list[tuple[torch.Tensor, torch.Tensor]], cache, batch) -> torch.Tensor:
        """Hidden states after the last layer, when this step can run natively; else None."""
        if (batch.decode is None or x.dtype is not torch.float32 or x.device.type != "cpu"
                or cache.k.dtype not in NATIVE_CACHE_DTYPES):
            return None
        scales = self.source.flat if self.source is not None else None
        return self.native.step(x, [c for c, _ in ropes], [s for _, s in ropes], cache.k, cache.v,
                                batch.slot_mapping, batch.decode.slots, batch.decode.lens, scales)


class DecodePlan:
    """A model's native decode stack, built on first use (its weights are loaded by then);
    ``reset()`` after swapping layers (adapters), as for :class:`LinearGroup`."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.enabled = True  # False: every step takes the module path (a reference for tests)
        self.reset()

    def reset(self) -> None:
        self._built, self._stack = False, None

    def stack(self) -> DecodeStack | None:
        if not self.enabled:
            return None
        if not self._built:
            self._stack = DecodeStack.build([layer.decode_spec() for layer in self.model.model.layers])
            self._built = True
        return self._stack

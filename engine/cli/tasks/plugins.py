"""``task=plugins``: every plugin, and what each registered. Imports no model code."""

from __future__ import annotations

from omegaconf import DictConfig


def run(cfg: DictConfig) -> None:
    from mistralrs.registry import plugin_host

    host = plugin_host(strict=bool(cfg.engine.strict_plugins))
    regs = host.registries
    print("plugins:")
    for info in regs.plugins:
        status = f"FAILED: {info.error}" if info.error else "ok"
        print(f"  {info.name:<12} {info.module:<36} {info.origin:<28} {status}")
    sections = [
        ("architectures", regs.architectures,
         lambda s: f"gguf={','.join(s.gguf_architectures) or '-'} hf={','.join(s.hf_architectures) or '-'}"),
        ("formats", regs.formats, lambda s: s.description),
        ("quant types", regs.quant_types, lambda s: s.description),
        ("adapters", regs.adapters, lambda s: s.description),
    ]
    for title, registry, describe in sections:
        print(f"{title}:")
        entries = list(registry)
        if not entries:
            print("  (none)")
        for entry in entries:
            print(f"  {entry.spec.name:<12} from {entry.plugin} ({entry.origin})  {describe(entry.spec)}")

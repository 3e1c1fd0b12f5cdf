"""The sampling settings a model file recommends: GGUF ``general.sampling.*`` keys, or HF
``generation_config.json``. Only values of the right type and range count; anything else is ignored
with the file named in the log (a recommendation, not a requirement)."""

from __future__ import annotations

import logging
import math
from typing import Any, Mapping

log = logging.getLogger(__name__)

# sampling.* field -> (GGUF key, HF generation_config key, accepted range)
FIELDS = {
    "temperature": ("general.sampling.temp", "temperature", (0.0, 100.0)),
    "top_k": ("general.sampling.top_k", "top_k", (0, 2**31 - 1)),
    "top_p": ("general.sampling.top_p", "top_p", (1e-9, 1.0)),
    "min_p": ("general.sampling.min_p", "min_p", (0.0, 1.0)),
}


def _accept(name: str, value: Any, where: str) -> float | int | None:
    low, high = FIELDS[name][2]
    integral = isinstance(low, int)
    ok = (isinstance(value, int) if integral else isinstance(value, (int, float))) and not isinstance(value, bool)
    if ok and math.isfinite(float(value)) and low <= value <= high:
        return int(value) if integral else float(value)
    log.info("%s: ignoring the recommended %s=%r (not a valid value)", where, name, value)
    return None


def from_gguf(metadata: Mapping[str, Any], where: str) -> dict[str, float | int]:
    return _pick(metadata, 0, where)


def from_generation_config(config: Mapping[str, Any], where: str) -> dict[str, float | int]:
    """HF semantics: ``do_sample: false`` means greedy whatever the other values say."""
    if config.get("do_sample") is False:
        return {"temperature": 0.0}
    return _pick(config, 1, where)


def _pick(source: Mapping[str, Any], key_index: int, where: str) -> dict[str, float | int]:
    """The valid values among FIELDS' keys (GGUF's at index 0, HF's at 1) present in ``source``."""
    out = {}
    for name, keys in FIELDS.items():
        if keys[key_index] in source:
            value = _accept(name, source[keys[key_index]], where)
            if value is not None:
                out[name] = value
    return out

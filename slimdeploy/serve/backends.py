"""bench_backend(): the same interleaved benchmark on onnxruntime, onnxruntime-genai, vLLM (offline engine)
or vLLM's OpenAI server, one process (tree) per model.

Model directories are turned into what the runtime loads first (`runtime_dir`): an ONNX export, an
onnxruntime-genai package, or, for per-layer widths, the DeciLM checkpoint; these conversions are not
verified again here (`slimdeploy export` does that) and are not timed. Ideal ratios always come from the
source models' weight bytes, so padding or conversion overheads show up as distance to the ideal.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

from slimdeploy.errors import SlimdeployError
from slimdeploy.serve.metrics import kv_bytes_per_token

BACKENDS = ("torch", "onnxruntime", "ort-genai", "vllm", "vllm-server")
NEEDS = {
    "onnxruntime": ("onnxruntime", "onnxruntime"),
    "ort-genai": ("onnxruntime_genai", "onnxruntime-genai"),
    "vllm": ("vllm", "vLLM"),
    "vllm-server": ("vllm", "vLLM"),
}
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


def check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise SlimdeployError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    module, label = NEEDS.get(backend, (None, None))
    if module and importlib.util.find_spec(module) is None:
        raise SlimdeployError(
            f"the {backend} backend needs {label}, which is not installed: pip install 'slimdeploy[cpu]' "
            "(or 'slimdeploy[gpu]' on CUDA machines)"
        )


INT_BYTES = {"I8": 1, "U8": 1, "I16": 2, "I32": 4, "I64": 8}


def source_facts(model_dir: Path, dtype: str) -> dict:
    """Parameters and weight bytes as served: float tensors in the serving `dtype`, integer tensors (the codes
    of a quantized checkpoint: int8, or int4 packed into int32) at their stored size."""
    from slimdeploy.load.decilm_format import logical_config
    from slimdeploy.load.model import safetensors_headers

    config = logical_config(json.loads((Path(model_dir) / "config.json").read_text()))
    headers = safetensors_headers(Path(model_dir))
    if not headers:
        raise SlimdeployError(f"{model_dir} has no safetensors weights; pass a model directory")
    nbytes = DTYPE_BYTES[dtype]
    n = weight_bytes = 0
    for meta in headers.values():
        count = 1
        for d in meta.get("shape", []):
            count *= d
        n += count
        weight_bytes += count * INT_BYTES.get(meta.get("dtype"), nbytes)
    return {
        "params": n,
        "weight_bytes": weight_bytes,
        "kv_bytes_per_token": kv_bytes_per_token(SimpleNamespace(**config), nbytes),
        "shape_only": config.get("slimdeploy_shape_only"),
        "vocab_size": config["vocab_size"],
    }


def runtime_dir(backend: str, src: Path, work: Path, dtype: str) -> Path:
    """What the runtime loads, converted into `work` when the source is a plain model directory."""
    src = Path(src)
    per_layer = "slimdeploy_layer_widths" in (src / "config.json").read_text()
    if backend in ("vllm", "vllm-server") and per_layer:
        from slimdeploy.export.vllm import export_vllm

        export_vllm(src, work, verify=False)
        return work
    if backend == "onnxruntime" and not (src / "onnx_config.json").exists():
        from slimdeploy.export.onnx import export_onnx

        export_onnx(src, work, dtype="fp16" if dtype == "fp16" else "fp32", verify=False)
        return work
    if backend == "ort-genai" and not (src / "genai_config.json").exists():
        from slimdeploy.export.ort_genai import export_ort_genai
        from slimdeploy.serve.engines import has_tokenizer

        if not has_tokenizer(src):
            src = _with_stand_in_tokenizer(src, work.parent / f"{work.name}-src")
        export_ort_genai(src, work, dtype="fp32", verify=False)
        return work
    return src


def _with_stand_in_tokenizer(src: Path, staging: Path) -> Path:
    """The genai builder insists on a tokenizer; shape-only models have none. Token ids go in and come out
    either way, so the demo's tokenizer files stand in (the weights are linked, not copied)."""
    from slimdeploy.load.model import demo_model_dir

    staging.mkdir(parents=True)
    for f in src.iterdir():
        (staging / f.name).symlink_to(f.resolve())
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (demo_model_dir() / name).exists():
            (staging / name).symlink_to(demo_model_dir() / name)
    return staging


def start_runner(
    backend: str, path: Path, dtype: str, max_model_len: int, port: int, threads: int | None, trust: bool = False
):
    if backend == "vllm-server":
        from slimdeploy.serve.openai_server import VllmServer

        return VllmServer(path, dtype, port, max_model_len, trust_remote_code=trust)
    from slimdeploy.serve.worker import Worker

    options = {"max_model_len": max_model_len, "threads": threads, "trust_remote_code": trust}
    return Worker(backend, path, dtype, options)


def bench_backend(
    sources: dict[str, Path],
    backend: str,
    cfg,
    work: Path,
    progress=None,
    port: int = 8000,
    threads=None,
    trust_remote_code: bool = False,
) -> dict:
    """`sources`: name -> model directory (first = baseline). Every runner is stopped at the end."""
    from slimdeploy.serve.bench import run_bench
    from slimdeploy.utils.trust import remote_code_allowed

    check_backend(backend)
    for name, src in sources.items():  # before anything starts: foreign code, prompts longer than the context
        remote_code_allowed(Path(src), trust_remote_code)
        config = json.loads((Path(src) / "config.json").read_text())
        cfg.check_context(config.get("max_position_embeddings"), f"{name} ({src})")
    if backend in ("onnxruntime", "ort-genai") and cfg.dtype == "bf16":
        raise SlimdeployError(f"the {backend} backend runs fp32 (or fp16 for onnxruntime) on CPU; pass --dtype fp32")
    if backend == "vllm-server":  # refuse a busy port before any model loads
        from slimdeploy.serve.openai_server import check_port_free

        for i in range(len(sources)):
            check_port_free(port + i)
    facts = {name: source_facts(path, cfg.dtype) for name, path in sources.items()}
    vocab = min(f.pop("vocab_size") for f in facts.values())
    max_len = cfg.input_len + cfg.output_len + 16
    runners: dict = {}
    try:
        for i, (name, src) in enumerate(sources.items()):
            path = runtime_dir(backend, src, work / f"{name}-{backend}", cfg.dtype)
            runners[name] = start_runner(backend, path, cfg.dtype, max_len, port + i, threads, trust_remote_code)
        report = run_bench(runners, facts, cfg, vocab, backend, progress)
    finally:
        for r in runners.values():
            r.close()
    report["runtime_dirs"] = {name: str(getattr(r, "path", "")) for name, r in runners.items()}
    return report

"""Plain ONNX export: one decoder graph with an explicit KV cache (see onnx_decoder.py), through
torch.onnx's dynamo exporter, verified in onnxruntime against transformers:

- logits parity for the prefill step (whole prompt, empty cache) and every decode step (one token, cache),
  within ATOL/RTOL per dtype (below), and
- greedy generation in onnxruntime (with its own cache) identical to transformers for N tokens (fp32).

`int8`: the fp32 graph, then onnxruntime's dynamic quantization of every weight MatMul but the LM head (int8
weights per output channel, activations quantized per tensor at run time; CPU kernels on every x86 host).
Its logits cannot match fp32 within a float tolerance, so it is verified by top-1 agreement: at every
position of onnxruntime's own greedy run, transformers' fp32 argmax on the same prefix must equal
onnxruntime's token at >= INT8_AGREEMENT_FLOOR of the positions (the max logit difference is reported).

Output: model.onnx (+ model.onnx.data for large models), onnx_config.json (inputs, outputs, cache shapes),
config.json, tokenizer files, export_report.json.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from slimdeploy.errors import SlimdeployError
from slimdeploy.export.feasibility import read_config
from slimdeploy.export.vllm import check_supported
from slimdeploy.utils.fs import atomic_dir

# max |onnxruntime - transformers| on logits: |diff| <= ATOL + RTOL * |ref|
TOLERANCES = {"fp32": (1e-4, 1e-4), "fp16": (5e-2, 1e-2), "bf16": (2e-1, 5e-2)}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "int8": torch.float32}
INT8_AGREEMENT_FLOOR = 0.95
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model")


def ort_session(path: Path):
    """An onnxruntime session on the best available provider (CUDA, else CPU), quiet logs."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise SlimdeployError("onnxruntime is not installed: pip install 'slimdeploy[cpu]' (or [gpu])") from None
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=providers)


def export_graph(wrapper, path: Path, dtype: torch.dtype) -> dict:
    """torch.onnx (dynamo) export with dynamic batch, sequence and past lengths; returns the I/O description."""
    from torch.export import Dim

    from slimdeploy.export.onnx_decoder import cache_names

    past, present = cache_names(len(wrapper.layouts))
    batch, seq, past_len = Dim("batch"), Dim("seq"), Dim("past_len")
    example_ids = torch.zeros(1, 4, dtype=torch.long)  # 0/1-sized example dims would be specialised
    example_past = wrapper.empty_cache(past=3, dtype=dtype)
    n_bytes = sum(p.numel() * p.element_size() for p in wrapper.parameters())
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # "torchvision is not installed" and similar notes are not ours to show
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapper,
                (example_ids, *example_past),
                str(path),
                dynamo=True,
                input_names=["input_ids", *past],
                output_names=["logits", *present],
                dynamic_shapes={"input_ids": {0: batch, 1: seq}, "past": tuple({0: batch, 2: past_len} for _ in past)},
                external_data=n_bytes > 1_500_000_000,  # protobuf's 2 GB limit
                verbose=False,
            )
    finally:
        quiet.setLevel(level)
    return {
        "inputs": ["input_ids", *past],
        "outputs": ["logits", *present],
        "cache": [{"kv_heads": lay.kv_heads, "head_dim": lay.head_dim} for lay in wrapper.layouts],
        "cache_layout": "[batch, kv_heads, past_len, head_dim]",
        "dtype": str(dtype).replace("torch.", ""),
    }


def ort_greedy(session, wrapper, prompt: list[int], n_tokens: int, dtype: torch.dtype):
    """Greedy decoding in onnxruntime with its KV cache: (tokens, per-step logits [prefill..., decode...])."""
    np_dtype = {torch.float32: np.float32, torch.float16: np.float16}.get(dtype)
    names = [i.name for i in session.get_inputs()]
    cache = [t.numpy() if np_dtype else t.float().numpy() for t in wrapper.empty_cache(dtype=dtype)]
    if dtype == torch.bfloat16:
        raise SlimdeployError("bf16 graphs cannot be fed from numpy here; verify bf16 on onnxruntime-gpu")
    ids = np.array([prompt], dtype=np.int64)
    tokens, step_logits = [], []
    for _ in range(n_tokens):
        out = session.run(None, dict(zip(names, [ids, *cache], strict=True)))
        step_logits.append(out[0][0].astype(np.float32))
        nxt = int(out[0][0, -1].argmax())
        tokens.append(nxt)
        cache = out[1:]
        ids = np.array([[nxt]], dtype=np.int64)
    return tokens, step_logits


def verify_onnx(path: Path, wrapper, model, prompts: list[list[int]], n_tokens: int, dtype_name: str) -> dict:
    from slimdeploy.export.verify import compare_tokens, hf_greedy, top1_agreement

    dtype = DTYPES[dtype_name]
    atol, rtol = TOLERANCES.get(dtype_name, (float("inf"), 0.0))  # int8: agreement instead (below)
    try:
        session = ort_session(path)
        runs = [ort_greedy(session, wrapper, p, n_tokens, dtype) for p in prompts]
    except SlimdeployError:
        raise
    except Exception as exc:  # onnxruntime raises its own exception types, one line is enough
        msg = str(exc).splitlines()[0][:200]
        raise SlimdeployError(
            f"onnxruntime cannot run the {dtype_name} graph on this machine ({msg}); export fp32 instead"
        ) from None
    got = [tokens for tokens, _ in runs]
    worst = {"prefill": 0.0, "decode": 0.0}
    excess = {"prefill": 0.0, "decode": 0.0}  # max of |diff| - (atol + rtol |ref|): <= 0 passes
    with torch.no_grad():
        for prompt, (tokens, logits) in zip(prompts, runs, strict=True):
            full = torch.tensor([prompt + tokens[:-1]])
            ref = model(full).logits[0].float().numpy()
            steps = [("prefill", logits[0], ref[: len(prompt)])]
            steps += [("decode", lg[0], ref[len(prompt) + k]) for k, lg in enumerate(logits[1:])]
            for kind, mine, theirs in steps:
                diff = np.abs(mine - theirs)
                worst[kind] = max(worst[kind], float(diff.max()))
                excess[kind] = max(excess[kind], float((diff - atol - rtol * np.abs(theirs)).max()))
    result = {
        "runtime": "onnxruntime",
        "dtype": dtype_name,
        "max_abs_logit_diff": {k: round(v, 7) for k, v in worst.items()},
        **compare_tokens(hf_greedy(model, prompts, n_tokens), got),
    }
    if dtype_name == "int8":
        result["top1_agreement"] = top1_agreement(model, prompts, got, INT8_AGREEMENT_FLOOR)
        agree, total = result["top1_agreement"]["agreeing"], result["top1_agreement"]["positions"]
        if agree < INT8_AGREEMENT_FLOOR * total:
            raise SlimdeployError(
                f"int8 onnxruntime agrees with fp32 transformers on {agree} of {total} next tokens, below the "
                f"floor of {INT8_AGREEMENT_FLOOR:.0%}; export fp32 instead (export not written)"
            )
        return result
    result |= {"atol": atol, "rtol": rtol, "logits_within_tolerance": all(v <= 0 for v in excess.values())}
    if not result["logits_within_tolerance"]:
        raise SlimdeployError(
            f"onnxruntime logits differ from transformers' beyond atol {atol} / rtol {rtol} "
            f"(max |diff| {result['max_abs_logit_diff']}); export not written"
        )
    if dtype_name == "fp32" and result["identical"] < result["prompts"]:
        raise SlimdeployError(
            f"onnxruntime greedy tokens differ from transformers': common prefixes {result['common_prefix']} "
            f"of {n_tokens}; export not written"
        )
    return result


def quantize_int8(path: Path) -> dict:
    """Dynamic int8 quantization of `path` in place (onnxruntime.quantization): every MatMul with a constant
    weight except the one that produces the logits (the LM head stays fp32, as in the quantize stage)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(path), load_external_data=False).graph
    head = [n.name for n in graph.node if n.op_type == "MatMul" and "logits" in n.output]
    scratch = path.with_name("model.int8.onnx")
    quantize_dynamic(
        str(path), str(scratch), weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=["MatMul"],
        nodes_to_exclude=head, use_external_data_format=(path.with_name(path.name + ".data")).exists(),
    )  # fmt: skip
    for f in path.parent.glob(path.name + "*"):
        f.unlink()
    scratch.rename(path)
    if scratch.with_name(scratch.name + ".data").exists():
        scratch.with_name(scratch.name + ".data").rename(path.with_name(path.name + ".data"))
    nodes = onnx.load(str(path), load_external_data=False).graph.node
    quantized = sum(n.op_type in ("DynamicQuantizeMatMul", "MatMulInteger") for n in nodes)
    if quantized == 0:
        raise SlimdeployError("onnxruntime's dynamic quantization changed no MatMul; export fp32 instead")
    return {"scheme": "int8 weights per channel, dynamic int8 activations", "quantized_matmuls": quantized,
            "kept_fp32": head}  # fmt: skip


def export_onnx(
    model_dir: Path,
    out: Path,
    dtype: str = "fp32",
    verify: bool = True,
    force: bool = False,
    n_tokens: int = 16,
    tp_size: int = 1,
) -> dict:
    """Write the ONNX decoder to `out` (whole or not at all), verified in onnxruntime (one device: `tp_size`
    is accepted for the common exporter signature and has no effect)."""
    from slimdeploy.export.onnx_decoder import DecoderWithCache
    from slimdeploy.export.verify import default_prompts
    from slimdeploy.load.model import load_model

    if dtype not in DTYPES:
        raise SlimdeployError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    model_dir = Path(model_dir)
    config = check_supported(model_dir)
    loaded = load_model(str(model_dir), "fp32" if dtype == "int8" else dtype)
    wrapper = DecoderWithCache(loaded.model).eval()
    report: dict = {
        "format": "onnx",
        "source": str(model_dir),
        "architecture": config["architectures"][0],
        "per_layer_widths": "slimdeploy_layer_widths" in config,
        "dtype": dtype,
    }
    with atomic_dir(out, force, [model_dir], what="export") as tmp:
        t0 = time.perf_counter()
        try:
            io = export_graph(wrapper, tmp / "model.onnx", DTYPES[dtype])
            if dtype == "int8":
                io["weights"] = quantize_int8(tmp / "model.onnx")
        except Exception as exc:
            msg = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            raise SlimdeployError(f"torch.onnx could not export this model in {dtype}: {msg}") from None
        report["export_seconds"] = round(time.perf_counter() - t0, 1)
        (tmp / "onnx_config.json").write_text(json.dumps(io, indent=1))
        # the stock config (+ per-layer widths): a DeciLM one would name code files this folder does not hold
        (tmp / "config.json").write_text(json.dumps(read_config(model_dir), indent=2))
        for name in TOKENIZER_FILES + ("generation_config.json",):
            if (model_dir / name).exists():
                shutil.copy2(model_dir / name, tmp / name)
        if verify:
            t0 = time.perf_counter()
            prompts = default_prompts(loaded.tokenizer)
            report["verification"] = verify_onnx(tmp / "model.onnx", wrapper, loaded.model, prompts, n_tokens, dtype)
            report["verification"]["seconds"] = round(time.perf_counter() - t0, 1)
        (tmp / "export_report.json").write_text(json.dumps(report, indent=1))
    return report

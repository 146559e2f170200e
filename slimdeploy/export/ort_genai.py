"""onnxruntime-genai packages (genai_config.json + model.onnx with KV cache) through its model builder,
verified by generating with onnxruntime-genai and comparing greedy tokens with transformers (fp32).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from slimdeploy.errors import SlimdeployError
from slimdeploy.export.vllm import check_supported, tp_readiness
from slimdeploy.utils.fs import atomic_dir

# int4 packages (the builder's RTN, 4-bit groups) cannot match fp32 greedy tokens; a floor on teacher-forced
# top-1 agreement catches a broken package (a wrong scale or packing gives near-chance agreement), not a
# quality claim: quality is measured by eval / benchmarks
INT4_AGREEMENT_FLOOR = 0.75


def ort_genai_greedy(package: Path, prompts: list[list[int]], max_tokens: int) -> list[list[int]]:
    try:
        import onnxruntime_genai as og
    except ImportError:
        raise SlimdeployError("onnxruntime-genai is not installed: pip install 'slimdeploy[cpu]'") from None
    model = og.Model(str(package))
    outs = []
    for p in prompts:
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, max_length=len(p) + max_tokens, min_length=len(p) + max_tokens)
        gen = og.Generator(model, params)
        gen.append_tokens(p)
        toks = []
        while not gen.is_done():
            gen.generate_next_token()
            toks.append(int(gen.get_next_tokens()[0]))
        outs.append(toks[:max_tokens])
    return outs


def export_ort_genai(
    model_dir: Path,
    out: Path,
    dtype: str = "fp32",
    verify: bool = True,
    force: bool = False,
    n_tokens: int = 16,
    tp_size: int = 1,
) -> dict:
    precision = dtype  # the builder's word for it
    from slimdeploy.export.verify import compare_tokens, default_prompts, hf_greedy, top1_agreement
    from slimdeploy.load.model import load_model

    model_dir = Path(model_dir)
    config = check_supported(model_dir)  # same family and uniform-width limits as the builder
    if precision not in ("fp32", "fp16", "int4"):
        raise SlimdeployError(f"precision {precision!r}: the builder supports fp32, fp16 and int4")
    loaded = load_model(str(model_dir), "fp32")
    report: dict = {
        "format": "ort-genai",
        "source": str(model_dir),
        "precision": precision,
        "tensor_parallel": tp_readiness(config, tp_size),
    }
    with atomic_dir(out, force, [model_dir], what="export") as tmp:
        cmd = [
            sys.executable,
            "-m",
            "onnxruntime_genai.models.builder",
            "-i",
            str(model_dir),
            "-o",
            str(tmp),
            "-p",
            precision,
            "-e",
            "cpu",
            "-c",
            str(tmp / ".builder-cache"),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not (tmp / "genai_config.json").exists():
            tail = [ln for ln in proc.stderr.splitlines() if ln.strip()][-2:]
            raise SlimdeployError(f"onnxruntime-genai builder failed: {' | '.join(tail)[-400:]}")
        cache = tmp / ".builder-cache"
        if cache.exists():
            import shutil

            shutil.rmtree(cache)
        if verify:
            prompts = default_prompts(loaded.tokenizer)
            t0 = time.perf_counter()
            try:
                got = ort_genai_greedy(tmp, prompts, n_tokens)
            except SlimdeployError:
                raise
            except Exception as exc:  # seen: fp16 packages fail to run on the CPU provider (buffer reuse)
                msg = str(exc).splitlines()[0][:160]
                raise SlimdeployError(
                    f"onnxruntime-genai cannot run the {precision} package on this machine ({msg}); "
                    "export fp32 (or int4) instead; nothing written"
                ) from None
            result = {
                "runtime": "onnxruntime-genai",
                "dtype": precision,
                **compare_tokens(hf_greedy(loaded.model, prompts, n_tokens), got),
                "seconds": round(time.perf_counter() - t0, 1),
            }
            if precision == "int4":  # 4-bit weights cannot match fp32 tokens: top-1 agreement with a floor
                result["top1_agreement"] = top1_agreement(loaded.model, prompts, got, INT4_AGREEMENT_FLOOR)
                if result["top1_agreement"]["agreement"] < INT4_AGREEMENT_FLOOR:
                    raise SlimdeployError(
                        f"the int4 package agrees with fp32 transformers at {result['top1_agreement']['agreement']:.1%}"
                        f" of next tokens (< {INT4_AGREEMENT_FLOOR:.0%}); export fp32 instead; nothing written"
                    )
            if precision == "fp32" and result["identical"] < result["prompts"]:
                raise SlimdeployError(
                    f"onnxruntime-genai greedy tokens differ from transformers': common prefixes "
                    f"{result['common_prefix']} of {n_tokens}; export not written"
                )
            report["verification"] = result
        (tmp / "export_report.json").write_text(json.dumps(report, indent=1))
    return report

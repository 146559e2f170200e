"""vLLM decode speed of quantized and pruned candidates against the dense model (the speed half of the Pareto
front): a Llama-3.2-1B-shaped model (random weights with the real shapes: speed does not depend on values),
candidates W8A8 (RTN: the grid is what is timed, not its quality), 20% pruned (uniform), 20% + W8A8.

    python benchmarks/quantized_serving.py [--work DIR] [--dtype fp32] [--concurrency 1,8]
        [--out benchmarks/results/quantized_serving.json]

Each candidate is one `slimdeploy bench run --backend vllm` with the dense model as baseline, interleaved in
the same invocation; the ideal speedup comes from the weight bytes as served (integer codes at their stored
size, floats in --dtype). `--dtype` is the host's native dtype: fp32 on AVX2-only CPUs (their bf16 is
emulated), bf16 with AVX512-BF16 or AMX. The host's CPU capability is recorded.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from serving_target import build_pair  # noqa: E402


def quantized(src: Path, out: Path) -> Path:
    if not (out / "quantize_report.json").exists():
        cmd = [sys.executable, "-m", "slimdeploy", "quantize", str(src), "--out", str(out), "--scheme", "w8a8"]
        subprocess.run([*cmd, "--method", "rtn", "--force"], check=True, capture_output=True)
    return out


def main() -> int:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="llama-3.2-1b")
    ap.add_argument("--work", default="/tmp/slimdeploy-quantized-serving")
    ap.add_argument("--dtype", default="fp32")
    ap.add_argument("--concurrency", default="1,8")
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "quantized_serving.json"))
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    dense, pruned = build_pair(args.shape, 0.2, work)
    candidates = {
        "w8a8": quantized(dense, work / "dense-w8a8"),
        "20%": pruned,
        "20%+w8a8": quantized(pruned, work / "pruned-w8a8"),
    }
    rows = []
    for name, cand in candidates.items():
        out = work / f"bench-{name.replace('%', 'pct').replace('+', '-')}"
        cmd = [sys.executable, "-m", "slimdeploy", "--json", "bench", "run", str(cand), "--baseline", str(dense)]
        cmd += ["--backend", "vllm", "--dtype", args.dtype, "--concurrency", args.concurrency, "--force"]
        cmd += ["--input-len", str(args.input_len), "--output-len", str(args.output_len)]
        cmd += ["--repeats", str(args.repeats), "--out", str(out)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            rows.append({"candidate": name, "error": proc.stderr.strip().splitlines()[-1:]})
            print(name, "failed:", rows[-1]["error"], flush=True)
            continue
        report = json.loads((out / "bench.json").read_text())
        for c, v in report["models"]["candidate"]["vs_baseline"].items():
            row = {"candidate": name, "concurrency": int(c), **v, "seconds": round(time.perf_counter() - t0, 1)}
            row["weight_bytes"] = {n: m.get("weight_bytes") for n, m in report["models"].items()}
            rows.append(row)
            print(name, f"c={c}: decode {v['decode_speedup']:.3f}x (ideal {v['ideal_speedup']:.3f}x)", flush=True)
    result = {
        "shape": args.shape,
        "shape_only": True,
        "settings": {k: v for k, v in vars(args).items() if k != "work"},
        "host": {"cpu_capability": torch.backends.cpu.get_cpu_capability()},
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

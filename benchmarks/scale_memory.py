"""Peak memory and per-layer time of sequential pruning on the shapes of Llama-3.2-1B, 3.2-3B and 3.1-8B.

    python benchmarks/scale_memory.py [--shapes llama-3.2-1b,llama-3.2-3b,llama-3.1-8b]
        [--criteria wanda,surgeon_layerwise] [--work /tmp/slimdeploy-scale] [--n-samples 16] [--seq-len 512]

Each shape is written once as a bf16 checkpoint with random weights (one safetensors shard per layer, the
embedded demo tokenizer: ids stay below every shape's vocabulary), under --work, never in the project. Each
(shape, criterion) then runs `slimdeploy prune --sequential --dtype bf16 --ratio 0.2` (uniform) in a fresh
process; its prune_report.json gives the process's peak RSS and the time per decoder layer (both passes).
The claim under test: peak RSS stays about one layer plus activations, so it does not grow with depth and the
8B shape prunes on a 24 GB machine within 6 GB. Rows are appended to the results JSON as they finish.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path


def write_shape(name: str, folder: Path, layers: int | None = None) -> int:
    """A random bf16 checkpoint with the named shape (`layers`: fewer decoder layers), written layer by layer
    (never whole in memory)."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoTokenizer

    from slimdeploy.zoo.registry import demo_model_dir
    from slimdeploy.zoo.shapes import shape_config

    if (folder / "model.safetensors.index.json").exists():
        return sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    cfg = shape_config(name)
    cfg.dtype = torch.bfloat16
    if layers:
        cfg.num_hidden_layers = layers
    g = torch.Generator().manual_seed(0)
    h, i, hd = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    q, kv = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd
    n = cfg.num_hidden_layers

    def rand(*shape: int) -> torch.Tensor:  # in row blocks: no fp32 copy of a 2 GB embedding
        out = torch.empty(*shape, dtype=torch.bfloat16)
        for r in range(0, shape[0], 8192):
            out[r : r + 8192] = torch.randn(min(8192, shape[0] - r), *shape[1:], generator=g) * 0.02
        return out

    weight_map: dict[str, str] = {}
    shards = n + 1
    for li in range(n):
        p = f"model.layers.{li}."
        layer = {
            p + "input_layernorm.weight": torch.ones(h, dtype=torch.bfloat16),
            p + "post_attention_layernorm.weight": torch.ones(h, dtype=torch.bfloat16),
            p + "self_attn.q_proj.weight": rand(q, h),
            p + "self_attn.k_proj.weight": rand(kv, h),
            p + "self_attn.v_proj.weight": rand(kv, h),
            p + "self_attn.o_proj.weight": rand(h, q),
            p + "mlp.gate_proj.weight": rand(i, h),
            p + "mlp.up_proj.weight": rand(i, h),
            p + "mlp.down_proj.weight": rand(h, i),
        }
        fname = f"model-{li + 1:05d}-of-{shards:05d}.safetensors"
        save_file(layer, str(tmp / fname), metadata={"format": "pt"})
        weight_map |= {k: fname for k in layer}
    rest = {
        "model.embed_tokens.weight": rand(cfg.vocab_size, h),
        "model.norm.weight": torch.ones(h, dtype=torch.bfloat16),
    }
    if not cfg.tie_word_embeddings:
        rest["lm_head.weight"] = rand(cfg.vocab_size, h)
    fname = f"model-{shards:05d}-of-{shards:05d}.safetensors"
    save_file(rest, str(tmp / fname), metadata={"format": "pt"})
    weight_map |= {k: fname for k in rest}
    del rest
    size = sum(f.stat().st_size for f in tmp.glob("*.safetensors"))
    (tmp / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": size}, "weight_map": weight_map}, indent=1)
    )
    cfg.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(demo_model_dir()).save_pretrained(tmp)
    tmp.rename(folder)
    return size


def commit() -> str | None:
    """The code's git commit (rows measured at different commits say so)."""
    proc = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent
    )
    return proc.stdout.strip() or None


def run_prune(model_dir: Path, out: Path, criterion: str, n_samples: int, seq_len: int) -> dict:
    cmd = [sys.executable, "-m", "slimdeploy", "--quiet", "prune", "--model", str(model_dir), "--out", str(out)]
    cmd += ["--force", "--sequential", "--criterion", criterion, "--dtype", "bf16", "--ratio", "0.2"]
    cmd += ["--n-samples", str(n_samples), "--seq-len", str(seq_len)]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"prune failed for {model_dir.name} / {criterion}: {proc.stderr.strip()[-800:]}")
    report = json.loads((out / "prune_report.json").read_text())
    report["wall_seconds"] = round(time.time() - t0, 1)
    return report


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="llama-3.2-1b,llama-3.2-3b,llama-3.1-8b")
    ap.add_argument("--criteria", default="wanda,surgeon_layerwise")
    ap.add_argument("--work", default="/tmp/slimdeploy-scale", help="where the random checkpoints are written")
    ap.add_argument("--n-samples", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--layers", type=int, default=None, help="fewer decoder layers (per-layer peak at full width)")
    ap.add_argument("--keep-outputs", action="store_true", help="keep the pruned folders (they are large)")
    ap.add_argument("--out", default="benchmarks/results/scale_memory.json")
    args = ap.parse_args()
    work = Path(args.work)
    out = Path(args.out)
    rows = json.loads(out.read_text())["rows"] if out.exists() else []
    for shape in args.shapes.split(","):
        folder = work / (shape + (f"-{args.layers}layers" if args.layers else ""))
        t0 = time.time()
        size = write_shape(shape, folder, args.layers)
        print(f"{shape}: {size / 1e9:.2f} GB of bf16 safetensors ({time.time() - t0:.0f} s)", flush=True)
        for crit in args.criteria.split(","):
            pruned = work / f"{folder.name}-{crit}"
            r = run_prune(folder, pruned, crit, args.n_samples, args.seq_len)
            if not args.keep_outputs:
                shutil.rmtree(pruned, ignore_errors=True)
            row = {
                "shape": shape,
                "criterion": crit,
                "layers": len(r["widths"]),
                "model_gb": round(size / 1e9, 2),
                "peak_rss_gb": round(r["peak_rss_mb"] / 1024, 2),
                "seconds_per_layer": r["seconds_per_layer"],
                "seconds": r["seconds"],
                "removed_fraction": round(r["removed_fraction"], 4),
                "calibration_tokens": args.n_samples * args.seq_len,
                "commit": commit(),
            }
            key = (shape, crit, row["layers"])
            rows = [x for x in rows if (x["shape"], x["criterion"], x["layers"]) != key] + [row]
            print(json.dumps(row), flush=True)
            out.parent.mkdir(parents=True, exist_ok=True)
            meta = {
                "what": "slimdeploy prune --sequential --dtype bf16 --ratio 0.2 (uniform, mlp+head), random weights",
                "machine": "2 CPU cores (AVX-512, AMX-bf16), 24 GB, no GPU",
                "date": time.strftime("%Y-%m-%d"),
            }
            out.write_text(json.dumps({**meta, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Data-parallel recovery: 2 gloo processes end with the weights of 1 process on the same global batch."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

TOL = 1e-5  # fp32, no autocast: only the order of the gradient sums differs between 1 and 2 ranks


def _config(text: Path, batch_size: int = 4):
    from slimdeploy.recover.config import RecoverConfig

    return RecoverConfig(
        rank=4, steps=3, warmup=0, batch_size=batch_size, seq_len=32, data=str(text), bf16=False, lr=5e-3, ckpt_every=2
    )


class _Stop(Exception):
    pass


def _stop_at_3(model, step):
    if step == 3:
        raise _Stop


def _train(model_dir: Path, text: Path, work: Path, batch_size: int = 4, steps: int = 3, on_step=None) -> dict:
    from slimdeploy.load.model import load_model
    from slimdeploy.recover.train import recover

    torch.manual_seed(0)
    loaded = load_model(str(model_dir), "fp32")
    cfg = _config(text, batch_size).model_copy(update={"steps": steps})
    result = recover(loaded.model, loaded.tokenizer, cfg, work_dir=work, on_step=on_step)
    merged = result.model.merge_and_unload()
    return {"state": {k: v.detach().clone() for k, v in merged.state_dict().items()}, "report": result.report}


def _rank_main(rank: int, world: int, init_file: str, model_dir: str, text: str, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        res = _train(Path(model_dir), Path(text), Path(out) / "work")
        if rank == 0:
            torch.save(res, Path(out) / "merged.pt")
    finally:
        dist.destroy_process_group()


def test_two_ranks_equal_one_process(tmp_path, tiny_dir, text_file):
    import torch.multiprocessing as mp

    (tmp_path / "work").mkdir()
    args = (2, str(tmp_path / "init"), str(tiny_dir), str(text_file), str(tmp_path))
    mp.spawn(_rank_main, args=args, nprocs=2, join=True)
    two = torch.load(tmp_path / "merged.pt", weights_only=False)
    (tmp_path / "single").mkdir()
    one = _train(tiny_dir, text_file, tmp_path / "single")
    assert two["report"]["world_size"] == 2 and one["report"]["world_size"] == 1
    assert two["report"]["tokens_per_rank"] * 2 == one["report"]["tokens_per_rank"] == 3 * 4 * 32
    for k, v in one["state"].items():
        torch.testing.assert_close(two["state"][k], v, atol=TOL, rtol=0, msg=k)
    from slimdeploy.load.model import load_model

    original = load_model(str(tiny_dir), "fp32").model.state_dict()
    assert any((one["state"][k] - original[k]).abs().max() > 1e-3 for k in original)  # training did move weights
    assert (tmp_path / "work" / "recover_ckpt.pt").exists()  # written once, by rank 0


def _resume_rank(rank: int, init_file: str, model_dir: str, text: str, out: str) -> None:
    """Both ranks stop after step 3 (rank 0 checkpointed step 2), then the same call resumes and finishes."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        try:
            _train(Path(model_dir), Path(text), Path(out) / "work", steps=4, on_step=_stop_at_3)
        except _Stop:
            pass
        res = _train(Path(model_dir), Path(text), Path(out) / "work", steps=4)
        if rank == 0:
            torch.save(res, Path(out) / "resumed.pt")
    finally:
        dist.destroy_process_group()


def test_interrupted_two_rank_recovery_resumes_to_the_same_weights(tmp_path, tiny_dir, text_file):
    import torch.multiprocessing as mp

    (tmp_path / "work").mkdir()
    mp.spawn(_resume_rank, args=(str(tmp_path / "init"), str(tiny_dir), str(text_file), str(tmp_path)), nprocs=2)
    resumed = torch.load(tmp_path / "resumed.pt", weights_only=False)
    assert resumed["report"]["tokens_per_rank"] == 2 * 4 * 32 // 2  # steps 3 and 4 only, after the resume
    (tmp_path / "single").mkdir()
    one = _train(tiny_dir, text_file, tmp_path / "single", steps=4)
    for k, v in one["state"].items():
        torch.testing.assert_close(resumed["state"][k], v, atol=TOL, rtol=0, msg=k)


def _bad_batch_rank(rank: int, init_file: str, model_dir: str, text: str, out: str) -> None:
    import torch.distributed as dist

    from slimdeploy.errors import SlimdeployError

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        _train(Path(model_dir), Path(text), Path(out), batch_size=3)
    except SlimdeployError as exc:
        Path(out, f"error-{rank}.txt").write_text(str(exc))
    finally:
        dist.destroy_process_group()


def test_world_size_must_divide_the_batch(tmp_path, tiny_dir, text_file):
    import torch.multiprocessing as mp

    mp.spawn(_bad_batch_rank, args=(str(tmp_path / "init"), str(tiny_dir), str(text_file), str(tmp_path)), nprocs=2)
    for rank in (0, 1):
        msg = (tmp_path / f"error-{rank}.txt").read_text()
        assert "batch_size 3 is not divisible by the world size 2" in msg and "\n" not in msg
    assert not (tmp_path / "recover_ckpt.pt").exists()


@pytest.mark.skipif(os.environ.get("WORLD_SIZE") is not None, reason="already inside a launcher")
def test_single_process_is_world_one():
    from slimdeploy.utils.distributed import average, init_from_env, world

    assert init_from_env() == (0, 1) == world() and average(2.5) == 2.5


RECIPE = """\
name: ddp-test
stages:
  - kind: prune
    ratio: 0.1
    criterion: l2
    round_to: 32
  - kind: recover
    steps: 3
    warmup: 0
    batch_size: 4
    seq_len: 64
    bf16: false
    kd_weight: 0.5
    ckpt_every: 2
  - kind: merge
"""


def test_torchrun_compress_equals_one_process(tmp_path):
    """The ecosystem's own launch: `torchrun --nproc-per-node 2 -m slimdeploy compress`; rank 0 writes the
    output and its report records the world size and each rank's tokens; the weights equal a 1-process run."""
    import json
    import subprocess
    import sys

    from safetensors.torch import load_file

    (tmp_path / "r.yaml").write_text(RECIPE)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd = ["-m", "slimdeploy", "--quiet", "compress", "--recipe", str(tmp_path / "r.yaml")]
    two = subprocess.run([*launch, *cmd, "--out", str(tmp_path / "o2")], env=env, capture_output=True, text=True)
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run([sys.executable, *cmd, "--out", str(tmp_path / "o1")], capture_output=True, text=True)
    assert one.returncode == 0, one.stderr[-3000:]
    recover = {}
    for d in ("o1", "o2"):
        stages = json.loads((tmp_path / d / "report.json").read_text())["stages"]
        recover[d] = next(s for s in stages if s.get("kind") == "recover")
        recover[d] = recover[d].get("details", recover[d])
    assert (recover["o2"]["world_size"], recover["o2"]["tokens_per_rank"]) == (2, 3 * 4 * 64 // 2)
    assert (recover["o1"]["world_size"], recover["o1"]["tokens_per_rank"]) == (1, 3 * 4 * 64)
    a, b = load_file(tmp_path / "o1" / "model.safetensors"), load_file(tmp_path / "o2" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=TOL, rtol=0, msg=k)
    assert not list(tmp_path.glob(".o2*"))  # the work folder is gone: written whole, once

"""Sequential (layer-by-layer) pruning gives the in-memory path's pruned weights with one layer in memory."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import run_cli

from slimdeploy.errors import SlimdeployError
from slimdeploy.load.model import load_model
from slimdeploy.prune.api import PruneConfig
from slimdeploy.prune.stage import prune_to_dir


def _source(tmp_path, tokenizer, family: str, tied: bool, dtype=torch.float32):
    """A tiny model saved as a sharded checkpoint (index + several files), like real hub folders."""
    from slimdeploy.load.tiny import build_tiny_model

    model = build_tiny_model(
        family,
        tied,
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=16,
    ).to(dtype)
    src = tmp_path / f"src-{family}"
    model.save_pretrained(src, max_shard_size="200KB")
    tokenizer.save_pretrained(src)
    assert (src / "model.safetensors.index.json").exists() and len(list(src.glob("*.safetensors"))) > 2
    if family == "qwen2":  # real Qwen2 config.json files carry no head_dim
        cfg = json.loads((src / "config.json").read_text())
        cfg.pop("head_dim", None)
        (src / "config.json").write_text(json.dumps(cfg))
    return src


CASES = [  # family, tied, criterion, allocation, structures, ratio (embeddings are most of a tiny model)
    ("llama", False, "wanda", "uniform", ["mlp", "head"], 0.12),
    ("qwen2", True, "surgeon_layerwise", "global", ["mlp", "head", "kv"], 0.2),  # OBS update, per-layer widths
    ("qwen3", False, "flap", "uniform", ["mlp", "kv"], 0.12),  # global: refused (DeciLM has no q/k norms)
    ("mistral", True, "wanda", "uniform", ["mlp", "layer"], 0.2),  # whole layers dropped, renumbered
    ("llama", False, "random", "uniform", ["head"], 0.04),
]


@pytest.mark.parametrize("sequential", [False, True])
def test_global_widths_refused_before_work_where_no_format_carries_them(tmp_path, tokenizer, sequential):
    """Per-layer widths are saved as DeciLM files (stock transformers and vLLM load them); Qwen3's q/k norms
    have no place there, so a global prune of Qwen3 is refused before any weight loads."""
    from slimdeploy.errors import SlimdeployError

    src = _source(tmp_path, tokenizer, "qwen3", False)
    cfg = PruneConfig(criterion="l2", allocation="global", ratio=0.05, round_to=8)
    with pytest.raises(SlimdeployError, match="cannot represent qwen3"):
        prune_to_dir(str(src), cfg, tmp_path / "o", sequential=sequential)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("family,tied,criterion,allocation,structures,ratio", CASES)
def test_sequential_equals_in_memory(
    tmp_path, tokenizer, text_file, family, tied, criterion, allocation, structures, ratio
):
    src = _source(tmp_path, tokenizer, family, tied)
    cfg = PruneConfig(
        criterion=criterion,
        allocation=allocation,
        structures=structures,
        ratio=ratio,
        round_to=8,
        n_samples=4,
        seq_len=32,
        data=str(text_file),
    )
    r_mem = prune_to_dir(str(src), cfg, tmp_path / "mem")
    r_seq = prune_to_dir(str(src), cfg, tmp_path / "seq", sequential=True)
    assert r_seq["sequential"] and r_seq["params_after"] == r_mem["params_after"] < r_mem["params_before"]
    assert r_seq["widths"] == r_mem["widths"]
    mem = load_model(str(tmp_path / "mem"), "fp32", with_tokenizer=False).model
    seq = load_model(str(tmp_path / "seq"), "fp32", with_tokenizer=False).model
    a, b = mem.state_dict(), seq.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=0, msg=k)
    rec = [json.loads((tmp_path / d / "pruning.json").read_text()) for d in ("mem", "seq")]
    assert rec[0] == rec[1]
    x = torch.randint(3, 1000, (1, 12))
    torch.testing.assert_close(seq(x).logits, mem(x).logits, atol=1e-4, rtol=0)


def test_one_layer_in_memory_at_a_time(tmp_path, tokenizer, text_file, monkeypatch):
    """The depth-independence of peak memory, checked as structure: when a layer is read, every other
    decoder layer is on the meta device (holds no memory)."""
    import slimdeploy.prune.sequential as seqmod

    src = _source(tmp_path, tokenizer, "llama", False)
    seen = []
    real_onload = seqmod.onload_layer

    def onload(layer, prefix, index, device, dtype):
        from slimdeploy.analyze.adapters import decoder_layers

        others = [ly for ly in decoder_layers(model_box[0]) if ly is not layer]
        seen.append(sum(any(not p.is_meta for p in ly.parameters()) for ly in others))
        real_onload(layer, prefix, index, device, dtype)

    model_box = []
    real_skeleton = seqmod.skeleton

    def skel(*a, **k):
        model, index = real_skeleton(*a, **k)
        model_box.append(model)
        return model, index

    monkeypatch.setattr(seqmod, "onload_layer", onload)
    monkeypatch.setattr(seqmod, "skeleton", skel)
    cfg = PruneConfig(
        criterion="surgeon_layerwise", ratio=0.1, n_samples=2, seq_len=16, data=str(text_file), round_to=8
    )
    prune_to_dir(str(src), cfg, tmp_path / "out", sequential=True)
    assert len(seen) == 8 and seen == [0] * 8  # 4 layers x 2 passes, never another layer materialised


def test_bf16_stays_bf16_and_matches_in_memory(tmp_path, tokenizer, text_file):
    src = _source(tmp_path, tokenizer, "llama", False, dtype=torch.bfloat16)
    cfg = PruneConfig(criterion="wanda", ratio=0.1, n_samples=2, seq_len=16, data=str(text_file), round_to=8)
    prune_to_dir(str(src), cfg, tmp_path / "mem", dtype="bf16")
    report = prune_to_dir(str(src), cfg, tmp_path / "seq", dtype="auto", sequential=True)  # auto: the checkpoint's
    assert report["dtype"] == "bfloat16"
    from safetensors.torch import load_file

    seq = {}
    for f in (tmp_path / "seq").glob("*.safetensors"):
        seq |= load_file(f)
    mem = load_file(tmp_path / "mem" / "model.safetensors")
    assert all(t.dtype == torch.bfloat16 for t in seq.values())
    assert seq.keys() == mem.keys() and all(torch.equal(seq[k], mem[k]) for k in mem)


@pytest.mark.parametrize("mode", [["--sequential"], []])
def test_missing_shard_is_one_line_and_writes_nothing(tmp_path, tokenizer, text_file, capsys, mode):
    src = _source(tmp_path, tokenizer, "llama", False)
    shard = sorted(src.glob("model-*.safetensors"))[1]
    shard.unlink()
    out = tmp_path / "out"
    args = ["prune", "--model", str(src), "--out", str(out), "--criterion", "wanda", *mode]
    code, _, err = run_cli([*args, "--data", str(text_file), "--n-samples", "2", "--seq-len", "16"], capsys)
    assert code == 1 and f"names shards that are not in {src}: {shard.name}" in err and err.count("\n") == 1, err
    assert not out.exists() and not list(tmp_path.glob(".out.partial*"))
    code, _, err = run_cli(["eval", "--model", str(src), "--data", str(text_file)], capsys)
    assert code == 1 and f"names shards that are not in {src}: {shard.name}" in err and err.count("\n") == 1, err


@pytest.mark.parametrize(
    "extra,match",
    [
        (["--criterion", "taylor"], "needs a backward pass through the whole model"),
        (["--criterion", "surgeon"], "use surgeon_layerwise"),
        (["--criterion", "wanda", "--shots", "2"], "sequential pruning runs one shot"),
    ],
)
def test_what_cannot_run_layer_by_layer_is_refused_first(tmp_path, tiny_dir, capsys, extra, match):
    out = tmp_path / "out"
    code, _, err = run_cli(["prune", "--model", str(tiny_dir), "--out", str(out), "--sequential", *extra], capsys)
    assert code == 1 and match in err and err.count("\n") == 1, err
    assert not out.exists()


def test_sequential_needs_a_local_folder(tmp_path):
    cfg = PruneConfig(criterion="l2")
    with pytest.raises(SlimdeployError, match="local model folder"):
        prune_to_dir("some-org/some-model", cfg, tmp_path / "out", sequential=True)
    assert not (tmp_path / "out").exists()


def test_cli_sequential_output_loads_and_runs(tmp_path, tiny_dir, capsys, text_file):
    out = tmp_path / "out"
    args = ["prune", "--model", str(tiny_dir), "--out", str(out), "--criterion", "surgeon_layerwise", "--sequential"]
    args += ["--ratio", "0.03", "--round-to", "8", "--data", str(text_file), "--n-samples", "2", "--seq-len", "16"]
    code, stdout, err = run_cli(args, capsys)
    assert code == 0, err
    report = json.loads((out / "prune_report.json").read_text())
    assert report["sequential"] and report["update"] == "cols" and 0.02 < report["removed_fraction"] < 0.04
    model = load_model(str(out), "fp32").model
    assert torch.isfinite(model(torch.randint(3, 100, (1, 8))).logits).all()


def test_A_inv_is_the_damped_inverse_of_the_mean_covariance():
    from slimdeploy.score.stats import InputStats

    x = torch.randn(2, 50, 12, generator=torch.Generator().manual_seed(0))
    st = InputStats()
    for part in x:
        st.add(part, with_cov=True)
    flat = x.reshape(-1, 12).double()
    A = flat.T @ flat / flat.shape[0]
    ref = torch.linalg.inv(A + 0.01 * A.diagonal().mean() * torch.eye(12, dtype=torch.float64))
    torch.testing.assert_close(st.A_inv(), ref, rtol=1e-5, atol=1e-8)


def test_nan_in_the_source_is_refused_and_nothing_written(tmp_path, tokenizer, text_file):
    from safetensors.torch import load_file, save_file

    src = _source(tmp_path, tokenizer, "llama", False)
    index = json.loads((src / "model.safetensors.index.json").read_text())["weight_map"]
    name = "model.layers.2.input_layernorm.weight"  # never sliced: only the writer's check can see it
    shard = src / index[name]
    tensors = load_file(shard)
    tensors[name][0] = float("nan")
    save_file(tensors, shard, metadata={"format": "pt"})
    cfg = PruneConfig(criterion="random", ratio=0.1, round_to=8)
    with pytest.raises(SlimdeployError, match="model.layers.2.input_layernorm.weight contains NaN"):
        prune_to_dir(str(src), cfg, tmp_path / "out", sequential=True)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.partial*"))


@pytest.mark.parametrize("chunk", [1, 1 << 23])  # one block per chunk, and all blocks at once
def test_obs_costs_in_chunks_match_the_formula(monkeypatch, chunk):
    from slimdeploy.score import surgeon

    monkeypatch.setattr(surgeon, "CHUNK", chunk)
    g = torch.Generator().manual_seed(0)
    W = torch.randn(6, 8, generator=g)
    X = torch.randn(40, 8, generator=g)
    A = (X.T @ X / 40).double()
    A_inv = torch.linalg.inv(A)
    G = torch.eye(6, dtype=torch.float64) * 2
    blocks = torch.arange(8).view(4, 2)
    cols = surgeon.column_costs(W, A_inv, None, blocks)
    cols_g = surgeon.column_costs(W, A_inv, G, blocks)
    rows = surgeon.row_costs(W, A, None, torch.arange(6).view(3, 2))
    Wd = W.double()
    for j, c in enumerate(blocks):  # 1/2 tr([A^-1]_CC^-1 W_C^T G W_C), written out
        wc = Wd[:, c]
        inner = torch.linalg.inv(A_inv[c][:, c])
        assert cols[j].item() == pytest.approx(0.5 * torch.trace(inner @ wc.T @ wc).item(), rel=1e-10)
        assert cols_g[j].item() == pytest.approx(0.5 * torch.trace(inner @ wc.T @ G @ wc).item(), rel=1e-10)
    for j, r in enumerate(torch.arange(6).view(3, 2)):  # 1/2 tr(W_R A W_R^T) with G = I
        wr = Wd[r]
        assert rows[j].item() == pytest.approx(0.5 * torch.trace(wr @ A @ wr.T).item(), rel=1e-10)


@pytest.mark.parametrize("chunk", [1, 1 << 23])
def test_column_update_in_chunks_matches_the_formula(monkeypatch, chunk):
    from slimdeploy.score import surgeon

    monkeypatch.setattr(surgeon, "CHUNK", chunk)
    g = torch.Generator().manual_seed(1)
    W = torch.randn(5, 9, generator=g)
    X = torch.randn(30, 9, generator=g)
    A_inv = torch.linalg.inv((X.T @ X / 30).double())
    removed = torch.tensor([1, 4, 7])
    expected = W.double() - W.double()[:, removed] @ torch.linalg.inv(A_inv[removed][:, removed]) @ A_inv[removed]
    expected[:, removed] = 0  # dW = -W_:C [A^-1]_CC^-1 [A^-1]_C: , removed columns zero
    got = surgeon.remove_columns_update(W, A_inv, removed)
    assert got.dtype == W.dtype
    torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=0)


def test_sequential_chosen_by_itself_when_the_model_would_not_fit(tmp_path, tokenizer, text_file, monkeypatch):
    """With too little memory for the in-memory path: wanda goes sequential by itself, --no-sequential and
    whole-model-backward criteria are refused in one line before any weight loads, and so is a recipe."""
    from slimdeploy.errors import SlimdeployError
    from slimdeploy.prune import stage as stage_mod
    from slimdeploy.utils import memory

    src = _source(tmp_path, tokenizer, "llama", False)
    weights = stage_mod.weight_bytes_on_load(str(src), "fp32")
    monkeypatch.setattr(memory, "available_bytes", lambda: weights)  # 1.3x the weights are needed
    cfg = PruneConfig(criterion="wanda", ratio=0.12, round_to=8, n_samples=4, seq_len=32, data=str(text_file))
    assert prune_to_dir(str(src), cfg, tmp_path / "auto")["sequential"] is True
    with pytest.raises(SlimdeployError, match="drop --no-sequential"):
        prune_to_dir(str(src), cfg, tmp_path / "no", sequential=False)
    with pytest.raises(SlimdeployError, match="cannot run --sequential: criterion taylor"):
        prune_to_dir(str(src), cfg.model_copy(update={"criterion": "taylor"}), tmp_path / "t")
    monkeypatch.setattr(memory, "available_bytes", lambda: 10 * weights)
    assert "sequential" not in prune_to_dir(str(src), cfg, tmp_path / "mem")
    assert not (tmp_path / "no").exists() and not (tmp_path / "t").exists()


def test_recipe_refused_when_the_model_would_not_fit(tmp_path, tokenizer, monkeypatch, capsys):
    import yaml
    from conftest import run_cli

    from slimdeploy.utils import memory

    src = _source(tmp_path, tokenizer, "llama", False)
    monkeypatch.setattr(memory, "available_bytes", lambda: 1000)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"name": "r", "stages": [{"kind": "prune", "criterion": "l2"}]}))
    code, _, err = run_cli(
        ["compress", "--recipe", str(recipe), "--model", str(src), "--out", str(tmp_path / "o")], capsys
    )
    assert code == 1 and "slimdeploy prune --sequential" in err and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists()

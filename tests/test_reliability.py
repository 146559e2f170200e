"""The reliability matrix: every refusal path of the CLI on tiny inputs made here.

Each case must end with a non-zero exit, one line on stderr that says what was wrong (never an exception
class name, never a traceback), its input files byte-identical afterwards, and no output or temporary left
behind. Positive cases next to it check that what should still work does.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import run_cli

RAW_EXCEPTION = re.compile(r"^error: (\w+\.)*[A-Z]\w*(Error|Exception|Exit|Interrupt)\b|failed unexpectedly")


def digest_tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def leftovers(root: Path) -> list[str]:
    return [str(p) for p in root.rglob("*") if ".partial" in p.name or p.name.endswith(".lock")]


def save_tiny(path: Path, tokenizer=None, family: str = "llama", **overrides) -> Path:
    from slimdeploy.load.tiny import build_tiny_model

    kw = dict(hidden_size=64, intermediate_size=128, head_dim=16, num_attention_heads=4, num_key_value_heads=2)
    build_tiny_model(family, **{**kw, **overrides}).save_pretrained(path)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    return path


def edit_config(path: Path, **changes) -> None:
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(changes)
    (path / "config.json").write_text(json.dumps(cfg))


@dataclass
class Ctx:
    tmp: Path  # inputs live in tmp/in, the current directory is tmp/cwd
    tok: object
    text: Path

    @property
    def model(self) -> Path:
        path = self.tmp / "in" / "model"
        if not path.exists():
            save_tiny(path, self.tok)
        return path

    def file(self, name: str, content: str | bytes) -> Path:
        path = self.tmp / "in" / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return path

    def recipe(self, stages: list[dict], name: str = "r") -> Path:
        import yaml

        return self.file(f"{name}.yaml", yaml.safe_dump({"name": name, "stages": stages}))

    def bench_json(self, name: str, **changes) -> Path:
        cfg = {"input_len": 8, "output_len": 4, "dtype": "fp32", "repeats": 3, "warmup": 1}
        conc = {"1": {"output_tok_s": {"median": 100.0}, "tpot_s": {"p50": {"median": 0.01}}}}
        report = {"backend": "torch", "config": cfg, "models": {"candidate": {"concurrency": conc}}}
        for k, v in changes.items():
            (report["config"] if k in cfg else report)[k] = v
        return self.file(name, json.dumps(report))


def _no_tokenizer(c: Ctx) -> Path:
    return save_tiny(c.tmp / "in" / "weights-only")


def _model_with(c: Ctx, name: str, **config_changes) -> Path:
    path = save_tiny(c.tmp / "in" / name, c.tok)
    if config_changes:
        edit_config(path, **config_changes)
    return path


def _nan_model(c: Ctx) -> Path:
    from safetensors.torch import load_file, save_file

    path = _model_with(c, "nan")
    state = load_file(path / "model.safetensors")
    state["model.layers.1.mlp.up_proj.weight"][0, 0] = float("nan")
    save_file(state, path / "model.safetensors", {"format": "pt"})
    return path


def _bin_only(c: Ctx) -> Path:
    path = _model_with(c, "pickle")
    (path / "model.safetensors").unlink()
    torch.save({"x": torch.zeros(1)}, path / "pytorch_model.bin")
    return path


def _foreign_code(c: Ctx) -> Path:
    path = _model_with(c, "foreign", auto_map={"AutoModelForCausalLM": "modeling_decilm.DeciLMForCausalLM"})
    (path / "modeling_decilm.py").write_text("open('/tmp/slimdeploy-pwned', 'w').write('x')\n")
    return path


def _header_only_gguf(c: Ctx) -> Path:
    return c.file("header.gguf", b"GGUF\x03\x00\x00\x00" + b"\x00" * 16)


def _alpaca_bad(c: Ctx) -> Path:
    return c.file("bad.json", '[{"instruction": "x"}]')


def _out_file(c: Ctx) -> Path:
    return c.file("occupied", "not a directory")


def _user_dir(c: Ctx) -> Path:
    d = c.tmp / "in" / "user-folder"
    d.mkdir(exist_ok=True)
    (d / "thesis.tex").write_text("years of work")
    return d


def _folder_with(c: Ctx, name: str, files: dict[str, str], marker_files: list[str] | None = None) -> Path:
    """A user's folder holding files that look like ours (reports) beside their own; `marker_files`: also a
    marker of ours listing only those (the user added the rest later)."""
    from slimdeploy.utils.fs import MARKER

    d = c.tmp / "in" / name
    for rel, text in files.items():
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_text(text)
    if marker_files is not None:
        (d / MARKER).write_text(json.dumps({"written_by": "slimdeploy", "what": "prune", "files": marker_files}))
    return d


def _compressed_folder(c: Ctx) -> Path:  # what compress writes, before the marker listed its files
    return _folder_with(c, "compressed", {"report.json": "{}", "recipe.yaml": "name: x", "model.safetensors": "w"})


def _ci_folder(c: Ctx) -> Path:  # a CI repository's folder holding its saved reference
    return _folder_with(c, "ci", {"bench.json": "{}", "run-gate.sh": "slimdeploy bench check"})


def _project(c: Ctx) -> Path:  # a user's project that happens to hold a copied report
    return _folder_with(c, "project", {"main.py": "print()", "src/lib.py": "x = 1", "prune_report.json": "{}"})


def _thesis(c: Ctx) -> Path:
    return _folder_with(c, "thesis", {"thesis.tex": "years of work", "report.json": "{}", "recipe.yaml": "a: 1"})


def _ours_plus_notes(c: Ctx) -> Path:  # our output, and the user's notes written into it afterwards
    files = {"config.json": "{}", "prune_report.json": "{}", "notes.txt": "mine"}
    return _folder_with(c, "ours-plus", files, marker_files=["config.json", "prune_report.json"])


def _bench(c: Ctx, out: Path, *extra: str) -> list[str]:
    return ["bench", "run", str(c.model), "--baseline", str(c.model), "--out", str(out), *extra]


def _prune(c: Ctx, model: Path, out, *extra: str) -> list[str]:
    return ["prune", "--model", str(model), "--out", str(out), "--criterion", "l2", "--round-to", "8", *extra]


@dataclass
class Case:
    id: str
    args: Callable[[Ctx], list[str]]
    expect: str  # a fragment of the one-line message


CASES = [
    # --force never deletes what we did not write
    Case("force-cwd", lambda c: _prune(c, c.model, ".", "--force"), "current directory"),
    Case("force-input-parent", lambda c: _prune(c, c.model, c.model.parent, "--force"), "holds an input"),
    Case("force-input-itself", lambda c: _prune(c, c.model, c.model, "--force"), "holds an input"),
    Case("force-user-folder", lambda c: _prune(c, c.model, _user_dir(c), "--force"), "only directories slimdeploy"),
    Case("force-home", lambda c: _prune(c, c.model, Path.home(), "--force"), "home directory"),
    # report files of ours inside a folder do not make it ours: only the marker, listing every file, does
    Case("bench-out-compressed-model", lambda c: _bench(c, _compressed_folder(c)), "already exists"),
    Case("bench-out-ci-reference", lambda c: _bench(c, _ci_folder(c)), "already exists"),
    Case("bench-force-ci-reference", lambda c: _bench(c, _ci_folder(c), "--force"), "only directories slimdeploy"),
    Case("force-project-with-report", lambda c: _prune(c, c.model, _project(c), "--force"), "only directories"),
    Case(
        "compress-force-thesis",
        lambda c: [*_compress(c, [{"kind": "eval"}], _thesis(c)), "--force"],
        "only directories slimdeploy",
    ),
    Case("force-ours-plus-user-file", lambda c: _prune(c, c.model, _ours_plus_notes(c), "--force"), "did not write"),
    Case("out-inside-input", lambda c: _prune(c, c.model, c.model / "pruned"), "inside the input"),
    Case("out-is-file", lambda c: _prune(c, c.model, _out_file(c)), "not a directory"),
    Case("out-under-file", lambda c: _prune(c, c.model, _out_file(c) / "x"), "is a file"),
    # foreign code never runs without the flag
    Case("remote-code-inspect", lambda c: ["inspect", str(_foreign_code(c))], "--trust-remote-code"),
    Case(
        "remote-code-bench-vllm",
        lambda c: ["bench", "run", str(_foreign_code(c)), "--baseline", str(c.model), "--backend", "vllm"],
        "--trust-remote-code",
    ),
    # wrong inputs are refused, not loaded silently
    Case("config-more-layers", lambda c: ["inspect", str(_model_with(c, "deep", num_hidden_layers=5))], "missing"),
    Case("config-bad-shapes", lambda c: ["inspect", str(_model_with(c, "wide", intermediate_size=256))], "shapes"),
    Case("pickle-only", lambda c: ["inspect", str(_bin_only(c))], "pickle"),
    Case("nan-weights", lambda c: ["eval", "--model", str(_nan_model(c)), "--data", str(c.text)], "up_proj"),
    Case("invalid-config-json", lambda c: ["inspect", str(_broken_config(c))], "not valid JSON"),
    Case("unknown-architecture", lambda c: ["inspect", str(_model_with(c, "alien", model_type="alien"))], "alien"),
    Case("zero-byte-safetensors", lambda c: ["inspect", str(_weights(c, b""))], "corrupt safetensors"),
    Case("truncated-safetensors", lambda c: ["inspect", str(_weights(c, None))], "corrupt safetensors"),
    Case("header-only-gguf", lambda c: ["inspect", str(_header_only_gguf(c))], "cannot load GGUF"),
    Case("not-a-gguf-file", lambda c: ["inspect", str(c.file("weights.bin", b"x"))], "not a .gguf"),
    Case(
        "no-tokenizer-data-criterion",
        lambda c: ["prune", "--model", str(_no_tokenizer(c)), "--out", "o", "--criterion", "wanda"],
        "no tokenizer files",
    ),
    Case("bench-check-partial", lambda c: _check(c, c.bench_json("p.json", partial=True, error="died")), "partial"),
    Case("bench-check-dtype", lambda c: _check(c, c.bench_json("d.json", dtype="bf16")), "dtype"),
    Case("bench-check-repeats", lambda c: _check(c, c.bench_json("n.json", repeats=5)), "repeats"),
    Case("bench-check-not-json", lambda c: _check(c, c.file("x.json", b"\xff\xfe")), "not a bench.json"),
    Case("bench-check-missing", lambda c: _check(c, c.tmp / "in" / "none.json"), "does not exist"),
    # the gate never passes what it cannot compare
    Case("bench-check-nan", lambda c: _check(c, c.bench_json("nan.json", models=_conc(float("nan")))), "median"),
    Case("bench-check-null", lambda c: _check(c, c.bench_json("null.json", models=_conc(None))), "median"),
    Case("bench-check-no-models", lambda c: _check(c, c.bench_json("e.json", models={})), "no model"),
    Case(
        "bench-check-ref-no-levels",
        lambda c: ["bench", "check", str(c.bench_json("r.json")), "--against", str(_no_levels(c))],
        "no concurrency levels",
    ),
    # numbers out of range
    Case("eval-context-0", lambda c: ["eval", "--model", str(c.model), "--context-length", "0"], "--context-length"),
    Case("bench-output-len-0", lambda c: ["bench", "run", str(c.model), "--output-len", "0"], "--output-len"),
    Case("bench-repeats-0", lambda c: ["bench", "run", str(c.model), "--repeats", "0"], "--repeats"),
    Case("bench-concurrency-text", lambda c: ["bench", "run", str(c.model), "--concurrency", "a"], "--concurrency"),
    Case(
        "bench-longer-than-context",
        lambda c: ["bench", "run", str(c.model), "--baseline", str(c.model), "--input-len", "4000"],
        "exceeds the model's context",
    ),
    Case("export-tp-0", lambda c: ["export", str(c.model), "--tp-size", "0", "--out", "o"], "--tp-size"),
    Case("train-demo-steps", lambda c: ["zoo", "train-demo", "--steps", "-5", "--out", "d"], "--steps"),
    Case("train-demo-threads", lambda c: ["zoo", "train-demo", "--threads", "-3", "--out", "d"], "--threads"),
    *[
        Case(f"ratio-{r}", lambda c, r=r: _prune(c, c.model, "o", "--ratio", r), "ratio")
        for r in ("0", "1", "-0.1", "1.5")
    ],
    # refused before the work, not after it
    Case(
        "recipe-bad-alpaca",
        lambda c: _compress(c, [{"kind": "recover", "data": str(_alpaca_bad(c))}, {"kind": "merge"}]),
        "record 0",
    ),
    Case("recipe-missing-data", lambda c: _compress(c, [{"kind": "eval", "data": "in/nope.txt"}]), "does not exist"),
    Case("recipe-empty-data", lambda c: _compress(c, [{"kind": "eval", "data": str(c.file("e.txt", ""))}]), "no text"),
    Case(
        "recipe-binary-data",
        lambda c: _compress(c, [{"kind": "eval", "data": str(c.file("b.txt", b"\xff\xfe\x00"))}]),
        "not UTF-8",
    ),
    Case("recipe-out-is-file", lambda c: _compress(c, [{"kind": "eval"}], _out_file(c)), "not a directory"),
    Case(
        "recipe-vllm-head-dim-8",
        lambda c: _compress(c, [{"kind": "export", "format": "vllm"}], model=_model_with(c, "hd8", head_dim=8)),
        "head_dim 8",
    ),
    Case(
        "recipe-ort-genai-per-layer",
        lambda c: _compress(
            c,
            [{"kind": "prune", "criterion": "l2", "allocation": "global"}, {"kind": "export", "format": "ort-genai"}],
        ),
        "per-layer",
    ),
    Case("recipe-typo", lambda c: _compress(c, [{"kind": "prune", "ratoi": 0.2}]), "unknown key"),
    Case("recipe-type", lambda c: _compress(c, [{"kind": "prune", "ratio": "big"}]), "ratio"),
    Case("recipe-order", lambda c: _compress(c, [{"kind": "merge"}]), "recover stage"),
    Case("dry-run-missing-data", lambda c: _compress(c, [{"kind": "eval", "data": "nope.txt"}], dry=True), "nope"),
    Case("export-mixtral", lambda c: ["export", str(_mixtral(c)), "--format", "onnx", "--out", "o"], "Mixtral"),
    Case("export-not-a-dir", lambda c: ["export", str(c.text), "--format", "onnx", "--out", "o"], "not a model"),
    Case("bench-out-file", lambda c: ["bench", "run", str(c.model), "--out", str(_out_file(c))], "not a directory"),
    Case("mistyped-relative-path", lambda c: ["inspect", str(_mkdir(c, "fx")) + "/does_not_exist"], "does not exist"),
    Case("hub-id-offline", lambda c: ["inspect", "nobody/no-such-model"], "neither a local path"),
    Case("inspect-groups-gpt2", lambda c: ["inspect", str(_gpt2(c)), "--groups"], "supported: llama"),
    Case(
        "recipe-not-utf8", lambda c: ["compress", "--recipe", str(c.file("b.yaml", b"\xff\xfe")), "--dry-run"], "UTF-8"
    ),
    Case(
        "calibration-longer-than-context",
        lambda c: [*_prune(c, c.model, "o", "--criterion", "wanda", "--seq-len", "1000", "--data", str(c.text))],
        "exceeds the model's context",
    ),
    Case(
        "recipe-seq-len-over-context",
        lambda c: _compress(c, [{"kind": "recover", "seq_len": 4096}, {"kind": "merge"}]),
        "exceeds the model's context",
    ),
    # real models and the field's metrics (zoo, lm-eval tasks)
    Case("zoo-unknown-name", lambda c: ["inspect", "zoo:gpt-9"], "unknown zoo model"),
    Case("tasks-unknown", lambda c: ["eval", "--model", str(c.model), "--tasks", "arc_eazy"], "no task 'arc_eazy'"),
    Case(
        "tasks-data-missing",
        lambda c: ["eval", "--model", str(c.model), "--tasks", "piqa", "--task-data", str(c.tmp / "in")],
        "no piqa.jsonl",
    ),
    Case(
        "tasks-data-wrong-schema",
        lambda c: ["eval", "--model", str(c.model), "--tasks", "boolq", "--task-data", str(_task_dir(c))],
        "missing passage",
    ),
    Case("tasks-limit-0", lambda c: ["eval", "--model", str(c.model), "--tasks", "piqa", "--limit", "0"], "--limit 0"),
    Case(
        "recipe-tasks-unknown",
        lambda c: _compress(c, [{"kind": "eval", "tasks": ["arc_eazy"]}]),
        "no task 'arc_eazy'",
    ),
    Case(
        "protocol-without-data",
        lambda c: _compress(c, [{"kind": "eval", "protocol": "wikitext2"}]),
        "needs data",
    ),
    Case("eval-json-unknown-option", lambda c: ["eval", "--json", "--nope"], "No such option"),
    # memory blow-ups before any check: sizes are checked against the files first
    Case(
        "inspect-million-layers",
        lambda c: ["inspect", str(_model_with(c, "mega", num_hidden_layers=10**6))],
        "num_hidden_layers 1000000",
    ),
    Case("dry-run-huge-header", lambda c: _compress(c, [{"kind": "eval"}], model=_huge_header(c), dry=True), "claims"),
    # refused in preflight, not in the stage that would meet it
    Case("chat-template-popen", lambda c: _chat(c, POPEN_TEMPLATE), "chat template"),
    Case("chat-template-include", lambda c: _chat(c, "{% include 'secrets.txt' %}"), "chat template"),
    Case(
        "recovery-text-too-short",
        lambda c: _compress(c, [{"kind": "recover", "data": str(c.file("s.txt", "short"))}, {"kind": "merge"}]),
        "too short",
    ),
    # raw exceptions that used to reach the user
    Case(
        "compress-zero-byte-safetensors", lambda c: _compress(c, [{"kind": "eval"}], model=_weights(c, b"")), "corrupt"
    ),
    Case(
        "compress-truncated-safetensors", lambda c: _compress(c, [{"kind": "eval"}], model=_weights(c, None)), "corrupt"
    ),
    Case(
        "set-yaml-tag",
        lambda c: [*_compress(c, [{"kind": "prune"}]), "--set", "prune.ratio=!!python/name:os.system"],
        "not plain YAML",
    ),
    Case(
        "set-invalid-yaml", lambda c: [*_compress(c, [{"kind": "prune"}]), "--set", "prune.ratio=[1"], "not plain YAML"
    ),
    Case(
        "recipe-invalid-yaml",
        lambda c: ["compress", "--recipe", str(c.file("bad.yaml", "a: [1")), "--dry-run"],
        "not valid YAML",
    ),
    Case("recipe-string-stages", lambda c: _compress(c, ["prune", "merge"]), "not a stage"),
    Case(
        "task-data-malformed-line",
        lambda c: ["eval", "--model", str(c.model), "--tasks", "piqa", "--task-data", str(_piqa_dir(c))],
        "piqa.jsonl:2",
    ),
    Case("sequential-remote-code", lambda c: _prune(c, _foreign_code(c), "o", "--sequential"), "--trust-remote-code"),
    Case("sequential-truncated", lambda c: _prune(c, _weights(c, None), "o", "--sequential"), "corrupt"),
    Case("train-demo-out-file", lambda c: ["zoo", "train-demo", "--out", str(_out_file(c))], "not an empty directory"),
    # minor
    Case(
        "data-without-suffix",
        lambda c: _compress(c, [{"kind": "eval", "data": str(c.file("hostname", "x"))}], dry=True),
        "no suffix",
    ),
    Case("recipes-validate-dir", lambda c: ["recipes", "validate", str(c.tmp / "in")], "is a directory"),
    Case(
        "set-names-the-override",
        lambda c: ["compress", "--recipe", "20pct", "--set", "prune.ratio=big", "--dry-run"],
        "--set prune.ratio=big",
    ),
    Case(
        "tasks-typo-suggests",
        lambda c: ["eval", "--model", str(c.model), "--tasks", "arc_eazy"],
        "did you mean arc_easy",
    ),
]

POPEN_TEMPLATE = "{{ cycler.__init__.__globals__.os.popen('touch /tmp/slimdeploy-pwned').read() }}"


def _huge_header(c: Ctx) -> Path:
    import struct

    path = _model_with(c, "huge")
    weights = path / "model.safetensors"
    weights.write_bytes(struct.pack("<Q", 10 * 2**30) + weights.read_bytes()[8:])
    return path


def _chat(c: Ctx, template: str) -> list[str]:
    path = _model_with(c, "chat")
    cfg = json.loads((path / "tokenizer_config.json").read_text())
    cfg["chat_template"] = template
    (path / "tokenizer_config.json").write_text(json.dumps(cfg))
    (path / "chat_template.jinja").unlink(missing_ok=True)
    data = c.file("alpaca.json", json.dumps([{"instruction": "say hi", "input": "", "output": "hi"}] * 50))
    return _compress(c, [{"kind": "recover", "data": str(data), "seq_len": 16}, {"kind": "merge"}], model=path)


def _piqa_dir(c: Ctx) -> Path:
    d = c.tmp / "in" / "piqa-tasks"
    d.mkdir(exist_ok=True)
    good = json.dumps({"goal": "g", "sol1": "a", "sol2": "b", "label": 0})
    (d / "piqa.jsonl").write_text(good + "\n{broken\n")
    return d


def _conc(value) -> dict:
    level = {"output_tok_s": {"median": value}, "tpot_s": {"p50": {"median": value}}}
    return {"candidate": {"concurrency": {"1": level}}}


def _no_levels(c: Ctx) -> Path:
    return c.bench_json("ref-empty.json", models={"candidate": {"concurrency": {}}})


def _task_dir(c: Ctx) -> Path:
    d = c.tmp / "in" / "tasks"
    d.mkdir(exist_ok=True)
    (d / "boolq.jsonl").write_text(json.dumps({"question": "q", "answer": True}) + "\n")
    return d


def _gpt2(c: Ctx) -> Path:
    import transformers

    path = c.tmp / "in" / "gpt2"
    cfg = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100)
    transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(path)
    return path


def _mkdir(c: Ctx, name: str) -> str:
    Path(name).mkdir(exist_ok=True)  # in the current directory
    return name


def _broken_config(c: Ctx) -> Path:
    path = _model_with(c, "broken")
    (path / "config.json").write_text("{not json")
    return path


def _weights(c: Ctx, content: bytes | None) -> Path:
    path = _model_with(c, "zero" if content == b"" else "truncated")
    weights = path / "model.safetensors"
    weights.write_bytes(content if content is not None else weights.read_bytes()[:2000])
    return path


def _mixtral(c: Ctx) -> Path:
    import transformers

    cfg = transformers.MixtralConfig(
        vocab_size=8192, hidden_size=64, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, num_local_experts=2, num_experts_per_tok=1, max_position_embeddings=128,
    )  # fmt: skip
    path = c.tmp / "in" / "mixtral"
    transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(path)
    c.tok.save_pretrained(path)
    return path


def _check(c: Ctx, report: Path) -> list[str]:
    return ["bench", "check", str(report), "--against", str(c.bench_json("ref.json"))]


def _compress(c: Ctx, stages: list[dict], out: Path | str = "run", model: Path | None = None, dry=False) -> list[str]:
    args = ["compress", "--recipe", str(c.recipe(stages)), "--model", str(model or c.model), "--out", str(out)]
    return args + (["--dry-run"] if dry else [])


@pytest.fixture
def ctx(tmp_path, tokenizer, text_file, monkeypatch):
    (tmp_path / "in").mkdir()
    (tmp_path / "cwd").mkdir()
    (tmp_path / "cwd" / "keep.txt").write_text("the user's file")
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path / "cwd")
    return Ctx(tmp_path, tokenizer, text_file)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_refusal(case: Case, ctx: Ctx, capsys):
    args = case.args(ctx)  # builds the inputs
    before = digest_tree(ctx.tmp)
    code, _, err = run_cli(args, capsys)
    assert code != 0, f"accepted: {err}"
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and not RAW_EXCEPTION.match(err), err
    assert case.expect in err, err
    assert digest_tree(ctx.tmp) == before, "an input or the user's files changed"
    assert not leftovers(ctx.tmp), leftovers(ctx.tmp)
    assert not Path("/tmp/slimdeploy-pwned").exists()


def test_matrix_counts_in_readme():
    """The README states how many cases the matrix has; keep it true."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert f"{len(CASES)} refusal cases" in readme


def test_unreachable_hub_fails_fast_naming_both_readings(monkeypatch, tmp_path):
    """No retries: one connection attempt to the hub's endpoint (a closed local port here)."""
    from huggingface_hub import constants

    from slimdeploy.errors import SlimdeployError
    from slimdeploy.load.model import hub_reachable, load_model

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    assert not hub_reachable()
    with pytest.raises(SlimdeployError, match="neither a local path .* hub cannot be reached"):
        load_model("nobody/no-such-model")

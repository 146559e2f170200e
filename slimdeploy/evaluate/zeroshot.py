"""Zero-shot accuracy through lm-evaluation-harness, on the model already in memory.

The official task definitions (prompts, choices, acc / acc_norm) come from lm-eval itself; only where the
documents come from changes: with `task_data`, each task reads `<task_data>/<task>.jsonl` in the hub
dataset's own schema instead of the hub (offline). A `limit` draws a seeded subset of that many documents
per task (lm-eval's `samples`), not the first N, and the standard errors lm-eval reports are kept.
"""

from __future__ import annotations

import functools
import json
import random
import time
from pathlib import Path

from slimdeploy.errors import SlimdeployError

# fields each task's documents need (the hub schemas); tasks not listed are passed through unchecked
SCHEMAS = {
    "arc_easy": ("question", "choices", "answerKey"),
    "arc_challenge": ("question", "choices", "answerKey"),
    "piqa": ("goal", "sol1", "sol2", "label"),
    "boolq": ("question", "passage", "label"),
    "hellaswag": ("ctx", "endings", "label", "activity_label"),
    "winogrande": ("sentence", "option1", "option2", "answer"),
    "openbookqa": ("question_stem", "choices", "answerKey"),
    "lambada_openai": ("text",),
}
CHANCE = {"arc_easy": 0.25, "arc_challenge": 0.25, "piqa": 0.5, "boolq": 0.5, "hellaswag": 0.25, "winogrande": 0.5}


def _lm_eval():
    try:
        import lm_eval
    except ImportError:
        raise SlimdeployError("zero-shot tasks need lm-evaluation-harness: pip install 'slimdeploy[eval]'") from None
    return lm_eval, _task_manager()


@functools.cache
def _task_manager():
    """lm-eval's task index takes seconds to build: once per process (the checks and the run share it)."""
    from lm_eval.tasks import TaskManager

    return TaskManager()


def parse_tasks(tasks: str | list[str]) -> list[str]:
    names = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks) if t.strip()]
    if not names:
        raise SlimdeployError("--tasks is empty; name lm-eval tasks, e.g. arc_easy,piqa,boolq")
    return names


def check_tasks(names: list[str], task_data: Path | None, limit: int | None) -> None:
    """Everything that can be refused before a model loads: names, files, schemas, limit."""
    _, tm = _lm_eval()
    if limit is not None and limit < 1:
        raise SlimdeployError(f"--limit {limit}: give 1 or more documents per task (or leave it out: all)")
    known = set(tm.all_tasks)
    for name in names:
        if name not in known:
            import difflib

            close = difflib.get_close_matches(name, sorted(known), n=5, cutoff=0.75)
            raise SlimdeployError(
                f"lm-eval has no task {name!r}" + (f"; did you mean {', '.join(close)}?" if close else "")
            )
        if task_data is not None:
            _check_file(name, Path(task_data))


def _check_file(name: str, task_data: Path) -> Path:
    path = task_data / f"{name}.jsonl"
    if not path.is_file():
        raise SlimdeployError(f"no {path.name} in {task_data}: --task-data needs one JSONL file per task")
    first, lineno = None, 0
    try:
        with path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):  # noqa: B007 (named in the error below)
                if line.strip():
                    doc = json.loads(line)
                    if not isinstance(doc, dict):
                        raise ValueError("not a JSON object")
                    first = first if first is not None else doc
    except UnicodeDecodeError:
        raise SlimdeployError(f"{path} is not UTF-8 text; one JSON document per line in the hub schema") from None
    except ValueError as exc:  # json.JSONDecodeError included
        raise SlimdeployError(
            f"{path}:{lineno} is not a JSON object ({str(exc).split(':')[0]}); one document per line"
        ) from None
    if first is None:
        raise SlimdeployError(f"{path} is empty; one JSON document per line in the hub schema")
    missing = [k for k in SCHEMAS.get(name, ()) if k not in first]  # (first document only: the schema)
    if missing:
        raise SlimdeployError(
            f"{path} does not have {name}'s hub schema (missing {', '.join(missing)}); "
            f"expected fields {', '.join(SCHEMAS[name])}"
        )
    return path


def label_skew(task, limit: float = 0.95, subset: list[int] | None = None) -> str | None:
    """A warning when nearly every document has the same gold answer (BoolQ is 62% yes; a file whose
    labels are all one value measures a bias, not accuracy). `subset`: only the documents evaluated (rendering
    every target of HellaSwag's 10,042 documents took 10 s of a 50-document run)."""
    from collections import Counter

    docs = list(task.eval_docs) if subset is None else [task.eval_docs[i] for i in subset]
    if len(docs) < 50:
        return None
    try:
        golds = Counter(str(task.doc_to_target(d)) for d in docs)
    except Exception:  # a task whose targets need more than the document: nothing to check
        return None
    value, count = golds.most_common(1)[0]
    if count / len(docs) >= limit:
        return f"{count} of {len(docs)} documents have the same gold answer ({value}); check the task data's labels"
    return None


def _task_config(tm, name: str, path: Path) -> dict:
    """lm-eval's own config for `name` with its evaluation split read from a local JSONL file."""
    cfg = dict(tm._factory._load_full_config(tm._entry(name), None))
    split = cfg.get("test_split") or cfg.get("validation_split")
    cfg.update(
        task=name,
        dataset_path="json",
        dataset_name=None,
        dataset_kwargs={"data_files": {split: str(path)}},
        training_split=None,
        fewshot_split=None,
        test_split=split if cfg.get("test_split") else None,
        validation_split=None if cfg.get("test_split") else split,
    )
    return cfg


def zero_shot(
    model, tokenizer, tasks: list[str], task_data: Path | None = None, limit: int | None = None,
    batch_size: int = 16, seed: int = 0,
) -> dict:  # fmt: skip
    """Accuracy per task (acc, acc_norm with lm-eval's standard errors) and the mean over tasks."""
    lm_eval, tm = _lm_eval()
    from lm_eval.tasks import get_task_dict

    from slimdeploy.evaluate.lm_adapter import SlicedHeadLM

    check_tasks(tasks, task_data, limit)
    specs = [_task_config(tm, n, _check_file(n, Path(task_data))) if task_data else n for n in tasks]
    task_dict = get_task_dict(specs, tm)
    samples, sizes, warnings = {}, {}, {}
    for name, task in task_dict.items():
        n = len(task.eval_docs)
        sizes[name] = n
        if limit is not None and limit < n:
            samples[name] = sorted(random.Random(f"{seed}:{name}").sample(range(n), limit))
        skew = label_skew(task, subset=samples.get(name))
        if skew:
            warnings[name] = skew
    lm = SlicedHeadLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    t0 = time.perf_counter()
    import lm_eval.evaluator as evaluator

    git_probe = evaluator.get_git_commit_hash  # runs `git describe` in the user's cwd: noise on stderr, not ours
    evaluator.get_git_commit_hash = lambda: None
    try:
        out = lm_eval.simple_evaluate(
            model=lm, tasks=list(task_dict.values()), task_manager=tm, num_fewshot=0, samples=samples or None,
            log_samples=False, random_seed=seed, verbosity="ERROR",
        )  # fmt: skip
    finally:
        evaluator.get_git_commit_hash = git_probe
    results = {}
    for name in tasks:
        r = out["results"][name]
        row = {"n": len(samples.get(name, range(sizes[name]))), "of": sizes[name], "chance": CHANCE.get(name)}
        if name in warnings:
            row["warning"] = warnings[name]
        for metric in ("acc", "acc_norm"):
            if f"{metric},none" in r:
                row[metric] = r[f"{metric},none"]
                row[f"{metric}_stderr"] = r.get(f"{metric}_stderr,none")
        results[name] = row
    accs = [r["acc"] for r in results.values() if "acc" in r]
    return {
        "tasks": results,
        "mean_acc": sum(accs) / len(accs) if accs else None,
        "protocol": {
            "harness": f"lm-eval {lm_eval.__version__}",
            "num_fewshot": 0,
            "data": str(task_data) if task_data else "hub",
            "subset": f"seeded sample of {limit} per task (seed {seed})" if samples else "full",
            "batch_size": batch_size,
            "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        },
        "wall_s": round(time.perf_counter() - t0, 1),
    }

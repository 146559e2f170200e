"""YAML -> Recipe: built-in names or paths, `--set` overrides, errors that name the key and its line."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import yaml
from pydantic import ValidationError

from slimdeploy.errors import SlimdeployError
from slimdeploy.recipe.schema import Recipe, check_order


def builtin_dir() -> Path:
    """recipes/ beside the package (source checkout or editable install), else where a wheel put it."""
    beside = Path(__file__).resolve().parents[2] / "recipes"
    if beside.is_dir():
        return beside
    return Path(sys.prefix) / "share" / "slimdeploy" / "recipes"


def builtin_recipes() -> dict[str, Path]:
    root = builtin_dir()
    return {p.relative_to(root).with_suffix("").as_posix(): p for p in sorted(root.rglob("*.yaml"))}


def find_recipe(spec: str) -> Path:
    path = Path(spec)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if path.is_dir():
            raise SlimdeployError(f"{spec} is a directory; pass a recipe .yaml file (or a built-in recipe name)")
        if not path.is_file():
            raise SlimdeployError(f"recipe file {spec} does not exist")
        return path
    known = builtin_recipes()
    if spec not in known:
        raise SlimdeployError(f"unknown recipe {spec!r}; built-in: {', '.join(known)} (or pass a .yaml path)")
    return known[spec]


def stage_kinds(spec: str) -> set[str]:
    """The stage kinds a recipe names (read leniently: validation comes later)."""
    try:
        data = yaml.safe_load(find_recipe(spec).read_text()) or {}
    except yaml.YAMLError:
        return set()
    if not isinstance(data, dict):
        return set()
    return {s["kind"] for s in data.get("stages", []) if isinstance(s, dict) and isinstance(s.get("kind"), str)}


def _line_of(node, loc: tuple) -> int | None:
    """Follow a pydantic error location through the YAML node tree; return the 1-based line reached."""
    line = node.start_mark.line + 1
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = [(k, v) for k, v in node.value if k.value == str(part)]
            if not match:
                continue  # a discriminator tag (e.g. 'prune') in the location: stay on this node
            key, node = match[0]
            line = key.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
    return line


def check_shape(data: dict, where: str) -> None:
    """A recipe's stages are a list of mappings, each with its kind: checked before anything indexes them."""
    stages = data.get("stages")
    if stages is None:
        return  # the schema names the missing key
    if not isinstance(stages, list):
        raise SlimdeployError(f"{where}: stages must be a list of stages (- kind: prune ...)")
    for i, st in enumerate(stages):
        if not isinstance(st, dict):
            raise SlimdeployError(
                f"{where}: stages[{i}] is {type(st).__name__} {st!r}, not a stage; write it as `- kind: {st}` "
                "with its keys below"
            )


def apply_overrides(data: dict, overrides: list[str], label: str = "--set") -> tuple[dict, dict[tuple, str]]:
    """`stage.key=value` sets key in every stage of that kind; `stages.N.key=value` in stage N; `key=value`
    at the top level. Values are parsed as YAML (numbers, booleans, lists). Also returns which recipe
    locations each override set, so that a validation error there names the override, not a file line."""
    touched: dict[tuple, str] = {}
    for item in overrides:
        if "=" not in item:
            raise SlimdeployError(f"{label} {item!r}: expected KEY=VALUE, e.g. prune.ratio=0.3")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            first = " ".join(str(exc).split())[:120]
            raise SlimdeployError(f"{label} {key}: the value {raw!r} is not plain YAML ({first})") from None
        parts = key.split(".")
        stages = data.get("stages") or []
        if parts[0] == "stages" and len(parts) == 3 and parts[1].isdigit():
            idx = int(parts[1])
            if idx >= len(stages):
                raise SlimdeployError(f"{label} {key}: the recipe has {len(stages)} stages")
            stages[idx][parts[2]] = value
            touched[("stages", idx, parts[2])] = f"{label} {item}"
        elif len(parts) == 2:
            hits = [i for i, s in enumerate(stages) if s.get("kind") == parts[0]]
            if not hits:
                raise SlimdeployError(f"{label} {key}: the recipe has no {parts[0]!r} stage")
            for i in hits:
                stages[i][parts[1]] = value
                touched[("stages", i, parts[1])] = f"{label} {item}"
        elif len(parts) == 1:
            data[key] = value
            touched[(key,)] = f"{label} {item}"
        else:
            raise SlimdeployError(f"{label} {key}: use KIND.KEY, stages.N.KEY or a top-level KEY")
    return data, touched


def _override_of(loc: tuple, touched: dict[tuple, str]) -> str | None:
    """The override that set the key a validation error points at (loc may hold the stage's kind tag)."""
    for where, item in touched.items():
        if where == loc[: len(where)] or (len(where) == 3 and loc[:2] == where[:2] and where[2] in loc[2:]):
            return item
    return None


def real_model_overrides(data: dict, model_params: int | None) -> list[str]:
    """A recipe's `real_model:` budgets (KIND.KEY: value), applied when the model is larger than
    `real_model_min_params`: demo-sized budgets are never run on a real model without saying so."""
    section = data.get("real_model") or {}
    if not section or model_params is None or model_params <= data.get("real_model_min_params", 50_000_000):
        return []
    return [f"{k}={json.dumps(v)}" for k, v in section.items()]


def load_recipe(spec: str, overrides: list[str] | None = None, model_params: int | None = None) -> tuple[Recipe, Path]:
    """Parse, override, validate and order-check a recipe, before any weights are loaded. With
    `model_params` above the recipe's threshold its `real_model:` budgets apply (the user's --set wins)."""
    path = find_recipe(spec)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SlimdeployError(f"{path} is not UTF-8 text; a recipe is a YAML file") from None
    except IsADirectoryError:
        raise SlimdeployError(f"{path} is a directory; pass a recipe .yaml file") from None
    try:
        data = yaml.safe_load(text)
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        raise SlimdeployError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise SlimdeployError(f"{path}: a recipe is a mapping with name and stages")
    check_shape(data, str(path))
    data, touched = apply_overrides(data, real_model_overrides(data, model_params), label=f"{path} real_model")
    data, by_user = apply_overrides(data, list(overrides or []))
    touched |= by_user
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(x) for x in err["loc"])
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        more = f" (+{len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
        override = _override_of(tuple(err["loc"]), touched)
        if override is not None:
            raise SlimdeployError(f"{override}: {key}: {msg}{more}") from None
        line = _line_of(root, err["loc"]) if root is not None else None
        raise SlimdeployError(f"{path}:{line}: {key}: {msg}{more}") from None
    check_order(recipe)
    return recipe, path


def dump_recipe(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)


def recipe_hash(recipe: Recipe, model: str | None) -> str:
    blob = json.dumps({"recipe": recipe.model_dump(mode="json"), "model": model}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]

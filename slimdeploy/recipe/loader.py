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


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """`stage.key=value` sets key in every stage of that kind; `stages.N.key=value` in stage N; `key=value`
    at the top level. Values are parsed as YAML (numbers, booleans, lists)."""
    for item in overrides:
        if "=" not in item:
            raise SlimdeployError(f"--set {item!r}: expected KEY=VALUE, e.g. prune.ratio=0.3")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw)
        parts = key.split(".")
        stages = data.get("stages") or []
        if parts[0] == "stages" and len(parts) == 3 and parts[1].isdigit():
            idx = int(parts[1])
            if idx >= len(stages):
                raise SlimdeployError(f"--set {key}: the recipe has {len(stages)} stages")
            stages[idx][parts[2]] = value
        elif len(parts) == 2:
            hits = [s for s in stages if s.get("kind") == parts[0]]
            if not hits:
                raise SlimdeployError(f"--set {key}: the recipe has no {parts[0]!r} stage")
            for s in hits:
                s[parts[1]] = value
        elif len(parts) == 1:
            data[key] = value
        else:
            raise SlimdeployError(f"--set {key}: use KIND.KEY, stages.N.KEY or a top-level KEY")
    return data


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
    data = apply_overrides(data, real_model_overrides(data, model_params) + list(overrides or []))
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(x) for x in err["loc"])
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        line = _line_of(root, err["loc"]) if root is not None else None
        more = f" (+{len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
        raise SlimdeployError(f"{path}:{line}: {key}: {msg}{more}") from None
    check_order(recipe)
    return recipe, path


def dump_recipe(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)


def recipe_hash(recipe: Recipe, model: str | None) -> str:
    blob = json.dumps({"recipe": recipe.model_dump(mode="json"), "model": model}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]

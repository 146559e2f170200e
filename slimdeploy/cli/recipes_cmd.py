"""`slimdeploy recipes list | show NAME | validate FILE`."""

from __future__ import annotations

from typing import Annotated

import typer

from slimdeploy.cli.common import emit

app = typer.Typer(help="List, show and validate compression recipes.", no_args_is_help=True)


@app.command("list")
def list_cmd() -> None:
    """The built-in recipes with their descriptions."""
    import yaml

    from slimdeploy.recipe.loader import builtin_recipes

    rows = []
    for name, path in builtin_recipes().items():
        data = yaml.safe_load(path.read_text()) or {}
        rows.append({"name": name, "description": data.get("description", ""), "path": str(path)})

    def human(rs: list) -> None:
        for r in rs:
            print(f"{r['name']:<16} {r['description']}")

    emit(rows, human)


@app.command("show")
def show_cmd(name: Annotated[str, typer.Argument(help="Recipe name or path.")]) -> None:
    """Print a recipe with every default filled in."""
    from slimdeploy.recipe.loader import dump_recipe, load_recipe

    rec, _ = load_recipe(name)
    emit(rec.model_dump(mode="json"), lambda r: print(dump_recipe(rec), end=""))


@app.command("validate")
def validate_cmd(path: Annotated[str, typer.Argument(help="Recipe .yaml file or name.")]) -> None:
    """Check a recipe's keys, types and stage order without loading any weights."""
    from slimdeploy.recipe.loader import load_recipe

    rec, p = load_recipe(path)
    emit(
        {"recipe": str(p), "name": rec.name, "stages": [s.kind for s in rec.stages], "valid": True},
        lambda r: print(f"{p}: valid ({len(rec.stages)} stages: {', '.join(r['stages'])})"),
    )

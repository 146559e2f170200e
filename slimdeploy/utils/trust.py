"""Whether a model folder's own Python code may run.

A folder may carry Python (`auto_map` in config.json points at it). slimdeploy's DeciLM export ships its
own two files; those are trusted when they are byte-identical to the copies inside this installation.
Anything else runs only with --trust-remote-code.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from slimdeploy.errors import SlimdeployError

OUR_CODE_DIR = Path(__file__).resolve().parent.parent / "export" / "decilm"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def our_code_hashes() -> dict[str, str]:
    return {p.name: _sha256(p) for p in sorted(OUR_CODE_DIR.glob("*.py")) if p.name != "__init__.py"}


def code_files(model_dir: Path) -> list[str]:
    """The Python files a loader could import from the folder, plus modules named in auto_map."""
    model_dir = Path(model_dir)
    names = {p.name for p in model_dir.glob("*.py")}
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        config = {}
    for ref in (config.get("auto_map") or {}).values():
        for r in ref if isinstance(ref, list) else [ref]:
            if isinstance(r, str) and "." in r:
                names.add(r.split("--")[-1].rsplit(".", 1)[0] + ".py")
    return sorted(names)


def remote_code_allowed(model_dir: Path, trust_remote_code: bool = False) -> bool:
    """The trust_remote_code value to pass to a runtime for `model_dir`; refuses foreign code without the flag."""
    files = code_files(model_dir)
    if not files:
        return False
    if trust_remote_code:
        return True
    ours = our_code_hashes()
    foreign = [f for f in files if f not in ours or not (Path(model_dir) / f).is_file()]
    foreign += [f for f in files if f not in foreign and _sha256(Path(model_dir) / f) != ours[f]]
    if foreign:
        raise SlimdeployError(
            f"{model_dir} carries its own Python code ({', '.join(foreign)}) that is not slimdeploy's export code; "
            "pass --trust-remote-code only if you trust it"
        )
    return True

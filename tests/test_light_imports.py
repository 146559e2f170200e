"""`import slimdeploy`, `--help` and `recipes validate` stay light: no torch, no transformers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROBE = """
import sys
sys.argv = ["slimdeploy", *sys.argv[1:]]
from slimdeploy.cli import main
try:
    main()
except SystemExit:
    pass
heavy = [m for m in ("torch", "transformers", "vllm", "onnxruntime", "lm_eval") if m in sys.modules]
print("HEAVY", heavy)
"""


def _heavy(*args: str) -> str:
    out = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=120).stdout
    return next(line for line in out.splitlines() if line.startswith("HEAVY"))


def test_import_is_light():
    out = subprocess.run(
        [sys.executable, "-c", "import slimdeploy, sys; print('torch' in sys.modules)"], capture_output=True, text=True
    )
    assert out.stdout.strip() == "False"


def test_recipes_validate_and_help_import_no_torch():
    assert _heavy("recipes", "validate", str(ROOT / "recipes" / "20pct.yaml")) == "HEAVY []"
    assert _heavy("--help") == "HEAVY []"
    assert _heavy("recipes", "list") == "HEAVY []"

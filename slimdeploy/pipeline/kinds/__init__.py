"""The built-in recipe stage kinds (base.py says what a kind is). One registration line each."""

from typing import Any

from slimdeploy.errors import SlimdeployError
from slimdeploy.pipeline.kinds import bench, evaluate, export, merge, prune, quantize, recover  # noqa: F401
from slimdeploy.pipeline.kinds.base import KINDS, NO_KIND, PlanFacts, StageKind, register  # noqa: F401


def kind_of(cfg_or_result: Any) -> StageKind:
    """The kind of a stage config, or of a report.json stage entry (a dict with "kind")."""
    if isinstance(cfg_or_result, dict):
        for kind in KINDS.values():
            if kind.name == cfg_or_result.get("kind"):
                return kind
        return NO_KIND  # the load entry and entries of kinds this version does not know
    if type(cfg_or_result) not in KINDS:
        raise SlimdeployError(f"no stage kind is registered for {type(cfg_or_result).__name__}")
    return KINDS[type(cfg_or_result)]

"""Stage kinds are one object each: every recipe stage config has a registered kind, and the runner, the
preflight and the reports name no kind (they ask the kind)."""

from __future__ import annotations

import re
import typing

from conftest import ROOT

from slimdeploy.pipeline.kinds import KINDS, StageKind, kind_of
from slimdeploy.recipe.schema import Stage

GENERIC = ["slimdeploy/pipeline/runner.py", "slimdeploy/pipeline/preflight.py", "slimdeploy/pipeline/report.py"]


def test_every_stage_config_has_one_kind():
    union = typing.get_args(typing.get_args(Stage)[0])
    assert set(union) == set(KINDS), "a Stage union member without a kind, or a kind outside the union"
    names = [k.name for k in KINDS.values()]
    assert len(set(names)) == len(names)
    for cfg_class, kind in KINDS.items():
        assert isinstance(kind, StageKind) and kind.config is cfg_class
        assert cfg_class.model_fields["kind"].annotation == typing.Literal[kind.name]
        assert type(kind).run is not StageKind.run, f"{kind.name} does not implement run"


def test_generic_modules_name_no_kind():
    for rel in GENERIC:
        src = (ROOT / rel).read_text()
        for kind in KINDS.values():
            assert not re.search(rf"[\"']{kind.name}[\"']", src), f"{rel} names the {kind.name} kind"
        assert not re.search(r"\b(Prune|Recover|Merge|Quantize|Eval|Export|Bench)Stage\b", src), rel


def test_report_entries_find_their_kind():
    assert kind_of({"kind": "eval", "label": "dense", "ppl": 3.0}).metric({"label": "dense", "ppl": 3.0}) == (
        "dense",
        3.0,
    )
    assert kind_of({"kind": "load"}).metric({}) is None  # the load entry has no kind and reports nothing
    assert (
        kind_of({"kind": "prune", "calibration": {"n_samples": 4, "seq_len": 32}}).tokens(
            {"calibration": {"n_samples": 4, "seq_len": 32}}
        )
        == 128
    )

"""Criterion names, importable without torch (configs validate against them before anything loads)."""

CRITERIA = ("random", "l1", "l2", "wanda", "flap", "taylor", "loraprune", "surgeon")
NEEDS_DATA = ("wanda", "flap", "taylor", "loraprune", "surgeon")

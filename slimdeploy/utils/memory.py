"""Memory probes shared by every stage's report."""

from __future__ import annotations

import resource
from pathlib import Path


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def available_bytes() -> int:
    """Memory this process can still use: what the machine has available, capped by a cgroup limit."""
    import psutil

    have = psutil.virtual_memory().available
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            limit = int(Path(limit_file).read_text().strip())
            used_file = limit_file.replace("memory.max", "memory.current").replace("limit_in_bytes", "usage_in_bytes")
            have = min(have, limit - int(Path(used_file).read_text().strip()))
        except (OSError, ValueError):
            continue
    return have


# peak of an in-memory prune per byte of weights: 1.25x measured (Llama-3.1-8B shape, bf16: 19.9 GB for
# 16 GB of weights, activation criterion); a whole-model backward (gradient criteria) also holds gradients
# and activations: 3x is an estimate, not a measurement
PRUNE_PEAK_PER_WEIGHT_BYTE = {False: 1.3, True: 3.0}


def prune_peak_estimate(weight_bytes: int, needs_grad: bool) -> int:
    return int(weight_bytes * PRUNE_PEAK_PER_WEIGHT_BYTE[needs_grad])

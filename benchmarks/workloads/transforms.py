"""Torch-free pre- and post-processing shared by W2/W3 (baseline and servekit)."""

from __future__ import annotations

import math
from collections.abc import Sequence


def normalize(x: Sequence[float]) -> list[float]:
    """Standardize one input vector to zero mean and unit variance."""
    mean = sum(x) / len(x)
    std = math.sqrt(sum((v - mean) ** 2 for v in x) / len(x))
    scale = 1.0 / (std + 1e-6)
    return [(v - mean) * scale for v in x]


def postprocess(logits: Sequence[float]) -> dict[str, float | int]:
    """Softmax + argmax: return ``{"label": argmax, "score": its probability}``."""
    top = max(logits)
    exps = [math.exp(v - top) for v in logits]
    label = max(range(len(exps)), key=exps.__getitem__)
    return {"label": label, "score": exps[label] / sum(exps)}

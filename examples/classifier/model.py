"""The toy model behind the classifier example: features, network, labels.

The task is small on purpose: tell a *statement* from a *question* from an
*exclamation* by the characters of the text. It is a real torch model, but
one that trains in well under a second on CPU, so the example needs no
download.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import torch
from torch import nn

LABELS = ("statement", "question", "exclamation")
N_FEATURES = 16
_N_HASHED = 12  # hashed character buckets; the other 4 features describe shape
_MAX_MARKS = 3


def featurize(text: str) -> list[float]:
    """Turn a text into 16 floats: a hashed bag of characters plus its shape.

    Deterministic across processes and runs (crc32, not Python's salted hash).
    """
    buckets = [0.0] * _N_HASHED
    for ch in text.lower():
        if ch.isalnum():
            buckets[zlib.crc32(ch.encode()) % _N_HASHED] += 1.0
    total = sum(buckets) or 1.0
    letters = [ch for ch in text if ch.isalpha()]
    upper_ratio = sum(ch.isupper() for ch in letters) / max(len(letters), 1)
    shape = [
        upper_ratio,
        min(text.count("?"), _MAX_MARKS) / _MAX_MARKS,
        min(text.count("!"), _MAX_MARKS) / _MAX_MARKS,
        min(len(text), 200) / 200,
    ]
    return [b / total for b in buckets] + shape


class MLP(nn.Module):
    """16 features in, one logit per label out."""

    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(N_FEATURES, hidden),
            nn.ReLU(),
            nn.Linear(hidden, len(LABELS)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def load_model(path: str | Path, device: str = "cpu") -> MLP:
    """Build the network, load the state dict at ``path``, move it to ``device``."""
    model = MLP()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.to(device).eval()

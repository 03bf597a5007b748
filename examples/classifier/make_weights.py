"""Train the example's toy MLP and write its weights (fixed seed, CPU, < 1 s).

    python examples/classifier/make_weights.py            # -> examples/classifier/weights/model.pt

``app.py`` calls :func:`ensure_weights` on start, so running this by hand
is optional.
"""

from __future__ import annotations

import io
import os
import random
import sys
import tempfile
from pathlib import Path

import torch
from model import LABELS, MLP, featurize
from torch import nn

WEIGHTS = Path(__file__).resolve().parent / "weights" / "model.pt"
SEED = 0

_WORDS = (
    "the", "model", "serves", "requests", "quickly", "on", "one", "small", "machine",
    "with", "a", "queue", "batch", "replica", "graph", "handle", "client", "server",
    "latency", "token", "text", "label", "score", "weight", "cat", "dog", "river",
    "city", "music", "coffee", "rain", "window",
)  # fmt: skip
_QUESTION_STARTS = ("what", "why", "how", "is", "can", "does", "where", "who")


def _sentence(rng: random.Random, label: str) -> str:
    words = [rng.choice(_WORDS) for _ in range(rng.randint(2, 9))]
    if label == "question":
        words.insert(0, rng.choice(_QUESTION_STARTS))
        return " ".join(words).capitalize() + rng.choice(("?", "?", "??"))
    text = " ".join(words).capitalize()
    if label == "exclamation":
        text = text.upper() if rng.random() < 0.5 else text
        return text + rng.choice(("!", "!", "!!", "!!!"))
    return text + rng.choice((".", ".", ""))


def training_set(n_per_label: int = 200, seed: int = SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthetic, labelled sentences, featurized: (features [N, 16], labels [N])."""
    rng = random.Random(seed)
    texts, labels = [], []
    for index, label in enumerate(LABELS):
        for _ in range(n_per_label):
            texts.append(_sentence(rng, label))
            labels.append(index)
    features = torch.tensor([featurize(t) for t in texts])
    return features, torch.tensor(labels)


def train(steps: int = 200, lr: float = 1.0, seed: int = SEED) -> MLP:
    """Full-batch gradient descent on the synthetic set; deterministic for a given seed.

    Kept fast on purpose (it runs on first start): hand-rolled rather than
    ``torch.optim``, whose import of ``torch._dynamo`` costs seconds, and on one
    thread, since tensors this small train several times slower on many.
    """
    torch.manual_seed(seed)
    x, y = training_set(seed=seed)
    model = MLP()
    params = list(model.parameters())
    loss_fn = nn.CrossEntropyLoss()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(steps):
            grads = torch.autograd.grad(loss_fn(model(x), y), params)
            with torch.no_grad():
                for param, grad in zip(params, grads, strict=True):
                    param.sub_(lr * grad)
    finally:
        torch.set_num_threads(threads)
    return model.eval()


def make_weights(path: Path = WEIGHTS) -> Path:
    """Train and save the state dict to ``path`` (atomically: concurrent callers are safe)."""
    buffer = io.BytesIO()
    torch.save(train().state_dict(), buffer)  # same bytes on every run
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "wb") as file:
        file.write(buffer.getvalue())
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return path


def ensure_weights(path: Path = WEIGHTS) -> Path:
    """Return ``path``, creating the weights first if the file is missing."""
    return path if path.exists() else make_weights(path)


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else WEIGHTS
    print(f"wrote {make_weights(out)}")

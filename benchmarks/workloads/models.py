"""Model code shared by the baseline and servekit apps (W2 and W3).

Both servers call exactly these functions, so any throughput difference comes
from the serving layer, not from the model work.  Weights are generated from a
fixed seed in code: no files are read.
"""

from __future__ import annotations

import itertools
import math
import os
import threading
from collections.abc import Sequence

import torch

from benchmarks.workloads import TORCH_THREADS_ENV

DEFAULT_TORCH_THREADS = 1

W2_WIDTHS: tuple[int, ...] = (16, 256, 256, 10)
W3_WIDTHS: tuple[int, ...] = (16, *([256] * 16), 10)
W2_SEED = 2
W3_SEED = 3


_configured = threading.local()


def configure_torch() -> int:
    """Set torch's intra-op thread count from the environment, in the calling thread.

    One thread is the default: on a 2-core machine the load generator needs the
    other core, and extra torch threads only contend with it (measured: 2
    threads cut W2 throughput and blow up its p99).  Part of the setting is
    thread-local (``torch.set_num_threads`` calls MKL's
    ``mkl_set_num_threads_local``), so :class:`MLP` calls this once in every
    thread that runs the model, not only in the thread that built it.
    """
    threads = int(os.environ.get(TORCH_THREADS_ENV, DEFAULT_TORCH_THREADS))
    if getattr(_configured, "threads", None) != threads:
        torch.set_num_threads(threads)
        _configured.threads = threads
    return threads


def build_mlp(widths: Sequence[int], seed: int) -> torch.nn.Sequential:
    """Return an eval-mode ReLU MLP with the given layer widths and seeded weights."""
    generator = torch.Generator().manual_seed(seed)
    layers: list[torch.nn.Module] = []
    for index, (fan_in, fan_out) in enumerate(itertools.pairwise(widths)):
        linear = torch.nn.Linear(fan_in, fan_out)
        bound = 1.0 / math.sqrt(fan_in)
        with torch.no_grad():
            linear.weight.uniform_(-bound, bound, generator=generator)
            linear.bias.uniform_(-bound, bound, generator=generator)
        layers.append(linear)
        if index < len(widths) - 2:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers).eval()


class MLP:
    """A seeded MLP callable on one input vector or on a batch of them."""

    def __init__(self, widths: Sequence[int], seed: int) -> None:
        """Build the network; also applies :func:`configure_torch`."""
        configure_torch()
        self.net = build_mlp(widths, seed)

    def __call__(self, x: Sequence[float]) -> list[float]:
        """Return the logits for one input vector."""
        return self.batch([x])[0]

    def batch(self, xs: Sequence[Sequence[float]]) -> list[list[float]]:
        """Return the logits for a batch of input vectors (one forward pass)."""
        configure_torch()
        with torch.inference_mode():
            out: list[list[float]] = self.net(torch.tensor(xs, dtype=torch.float32)).tolist()
        return out


def w2_model() -> MLP:
    """The W2 model: MLP 16-256-256-10."""
    return MLP(W2_WIDTHS, W2_SEED)


def w3_model() -> MLP:
    """The W3 model: deep narrow MLP 16 -> 256 x16 -> 10."""
    return MLP(W3_WIDTHS, W3_SEED)

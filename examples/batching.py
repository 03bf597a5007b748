"""Dynamic batching with `@sk.batch`: callers send one item, the method receives a list.

    python examples/batching.py

`square` gets up to 8 items at once, waiting at most 20 ms for a batch to fill. It returns
one result per item, in order; an exception in an item's place fails only that caller.
`count_to` is a batched generator: each step yields one chunk per caller.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import servekit as sk


@sk.deployment
class Squarer:
    def __init__(self) -> None:
        self.batch_sizes: list[int] = []

    @sk.batch(max_batch_size=8, max_wait_ms=20)
    async def square(self, xs: list[int]) -> list[int | Exception]:
        self.batch_sizes.append(len(xs))  # one call of this method per batch
        return [ValueError(f"cannot square {x}: negative") if x < 0 else x * x for x in xs]

    @sk.batch(max_batch_size=8, max_wait_ms=20)
    async def count_to(self, ns: list[int]) -> AsyncIterator[list[int | StopIteration]]:
        for step in range(1, max(ns) + 1):
            # one chunk per caller; StopIteration() ends that caller's stream
            yield [step if step <= n else StopIteration() for n in ns]

    def sizes(self) -> list[int]:
        return self.batch_sizes


app = Squarer.bind()


async def concurrent_calls(h: sk.AppHandle) -> None:
    results = await asyncio.gather(*(h.square(x) for x in range(20)))
    print("20 concurrent calls:", results)
    print("batch sizes:", await h.sizes())

    mixed = await asyncio.gather(h.square(3), h.square(-1), h.square(4), return_exceptions=True)
    print("one bad item:", [f"{type(r).__name__}: {r}" if isinstance(r, Exception) else r for r in mixed])

    async def count(n: int) -> list[int]:
        return [step async for step in h.count_to(n)]

    print("batched streams:", await asyncio.gather(count(1), count(3), count(2)))


def main() -> None:
    with sk.run(app) as h:
        print("a lone call:", h.square(7).result())  # a batch of one, after max_wait_ms
        asyncio.run(concurrent_calls(h))
        stats = h.status()["deployments"]["Squarer"]["replicas"][0]["batching"]["square"]
        print("stats:", stats)


if __name__ == "__main__":
    main()

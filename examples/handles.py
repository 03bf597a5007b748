"""Handles: how deployments call each other, and how your code calls the app.

    python examples/handles.py

`Pipeline` gets the other two deployments as handles. A handle call starts at once and
returns a response: `await` it in async code, call `.result()` in sync code, or pass it,
unawaited, into another call. Calls to generator methods stream with `async for` / `for`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import servekit as sk


@sk.deployment
class Tokenizer:
    def __call__(self, text: str) -> list[str]:  # a sync method: runs on a worker thread
        return text.lower().split()

    def stream(self, text: str) -> Iterator[str]:  # a generator method: callers iterate
        yield from text.lower().split()


@sk.deployment
class Counter:
    async def count(self, tokens: list[str]) -> int:
        if not tokens:
            raise ValueError("nothing to count")
        return len(tokens)


@sk.deployment
class Pipeline:
    def __init__(self, tokenizer: sk.DeploymentHandle, counter: sk.DeploymentHandle) -> None:
        self.tokenizer = tokenizer  # bound deployments arrive as handles
        self.counter = counter

    async def count_words(self, text: str) -> int:
        tokens = self.tokenizer(text)  # not awaited: the call is already running
        return await self.counter.count(tokens)  # a response as an argument is awaited first

    async def count_many(self, texts: list[str]) -> list[int]:
        calls = [self.counter.count(self.tokenizer(text)) for text in texts]  # all start now
        return list(await asyncio.gather(*calls))

    async def shout(self, text: str) -> AsyncIterator[str]:
        async for word in self.tokenizer.stream(text):  # a stream from another deployment
            yield word.upper()


app = Pipeline.bind(Tokenizer.bind(), Counter.bind())


async def from_async_code(h: sk.AppHandle) -> None:
    print("await:", await h.count_words("Handles are awaitable"))
    print("gather:", await h.count_many(["one", "one two", "one two three"]))
    print("async for:", [word async for word in h.shout("streams cross deployments")])


def main() -> None:
    with sk.run(app) as h:  # the ingress handle; the app stops when the block ends
        print(".result():", h.count_words("Sync code blocks on .result()").result())
        print("for:", list(h.shout("sync code iterates too")))
        asyncio.run(from_async_code(h))

        counter = h.get_handle("Counter")  # any deployment of the app, by name
        print("direct:", counter.count(["a", "b"]).result())
        try:
            h.count_words("").result()
        except ValueError as exc:  # the replica's exception type, naming the deployment
            print("error:", type(exc).__name__, "-", exc)


if __name__ == "__main__":
    main()

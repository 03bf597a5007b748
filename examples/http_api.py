"""HTTP endpoints: where parameters come from, responses, streaming and errors.

python examples/http_api.py                         # serve on a free port, call it, stop
servekit serve examples/http_api.py:app --port 8000  # or serve it and use curl
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
from pydantic import BaseModel, Field
from starlette.requests import Request

import servekit as sk
from servekit.errors import NotFoundError


class Item(BaseModel):
    name: str = Field(min_length=1)
    price: float = Field(gt=0)


@sk.deployment
class Store:
    def __init__(self) -> None:
        self.items: dict[int, Item] = {}

    @sk.endpoint("/items")  # POST (the default); a pydantic parameter is the JSON body
    async def add(self, item: Item) -> dict:
        item_id = len(self.items) + 1
        self.items[item_id] = item
        return {"id": item_id}

    @sk.endpoint("/items/{item_id}", methods=["GET"])  # item_id: path; currency: query string
    async def get(self, item_id: int, currency: str = "EUR") -> dict:
        if item_id not in self.items:
            raise NotFoundError(f"no item {item_id}; add one with POST /items")  # -> 404
        return {**self.items[item_id].model_dump(), "currency": currency}

    @sk.endpoint("/items", methods=["GET"])  # a generator streams: JSON lines, or SSE on request
    async def list_items(self, limit: int = 100) -> AsyncIterator[dict]:
        for item_id, item in list(self.items.items())[:limit]:
            yield {"id": item_id, **item.model_dump()}

    @sk.endpoint("/upload", methods=["PUT"])  # bytes: the raw body; Request: the request itself
    async def upload(self, data: bytes, request: Request) -> dict:
        return {"size": len(data), "content_type": request.headers.get("content-type")}


app = Store.bind()


def show(response: httpx.Response) -> None:
    request = response.request
    print(f"{request.method} {request.url.raw_path.decode()} -> {response.status_code}")
    print("   ", response.text.strip().replace("\n", "\n    "))


def main() -> None:
    with (
        sk.serve(app, port=0, blocking=False, max_body_bytes=1024) as server,
        httpx.Client(base_url=server.url, timeout=10) as http,
    ):
        show(http.post("/items", json={"name": "tea", "price": 3.5}))
        show(http.post("/items", json={"name": "cake", "price": 4}))
        show(http.get("/items/1", params={"currency": "USD"}))
        show(http.get("/items", params={"limit": 2}))
        show(http.get("/items", params={"limit": 1}, headers={"accept": "text/event-stream"}))
        show(http.put("/upload", content=b"\x00" * 100, headers={"content-type": "image/png"}))
        print("errors:")
        show(http.get("/items/7"))  # NotFoundError raised by the endpoint
        show(http.get("/items/seven"))  # path parameter is not an int
        show(http.post("/items", json={"name": "tea", "price": -1}))  # body fails validation
        show(http.post("/items", content=b"{oops", headers={"content-type": "application/json"}))
        show(http.delete("/items/1"))  # no DELETE route
        show(http.put("/upload", content=b"\x00" * 2048))  # over max_body_bytes
        show(http.get("/readyz"))


if __name__ == "__main__":
    main()

"""Traffic-split routers: weights, sticky users, a shadow, blue/green, outcomes. Notebook-style cells.

    python examples/routing.py

`sk.split` is a node of the graph: `Api` gets a handle whose calls go to one arm each. The
weights are exact over many calls, can change while serving, and a shadow arm sees a copy of
the traffic without its answers ever reaching a caller.
"""

from __future__ import annotations

import asyncio

import httpx

import servekit as sk


# %% The models: two versions of a sentiment classifier, and a candidate to shadow.
@sk.deployment
class Sentiment:
    def __init__(self, version: str, positive_words: list[str]) -> None:
        self.version = version
        self.positive = set(positive_words)

    async def __call__(self, text: str) -> str:
        return "positive" if self.positive & set(text.lower().split()) else "negative"


@sk.deployment
class Api:
    def __init__(self, classifier: sk.DeploymentHandle) -> None:
        self.classifier = classifier

    @sk.endpoint("/classify")
    async def classify(self, text: str) -> dict[str, str]:
        label: str = await self.classifier(text)
        sk.record_outcome("positive", label == "positive")  # an A/B outcome, per arm
        return {"label": label}


router = sk.split(
    {
        "v1": Sentiment.options(name="SentimentV1", version="v1").bind("v1", ["good"]),
        "v2": Sentiment.options(name="SentimentV2", version="v2").bind("v2", ["good", "great"]),
    },
    weights={"v1": 90, "v2": 10},
    name="sentiment",
    shadow={"v3": Sentiment.options(name="SentimentV3").bind("v3", ["good", "great", "fine"])},
    shadow_fraction=0.5,
)
app = Api.bind(router)


# %% In a notebook: sk.run, then call the ingress through its handle.
async def notebook_cell() -> None:
    with sk.run(app) as handle:
        labels = [await handle.classify(text="a good day") for _ in range(20)]
        print("labels:", sorted({label["label"] for label in labels}))
        view = handle.router("sentiment").status()
        print("calls per arm:", {arm: info["calls"] for arm, info in view["arms"].items()})


asyncio.run(notebook_cell())

# %% Over HTTP: the admin API changes weights while serving; every response has an x-request-id.
with sk.serve(app, port=0, blocking=False) as server, httpx.Client(base_url=server.url) as client:
    answer = client.post("/classify", params={"text": "a great day"})
    print("x-request-id present:", bool(answer.headers["x-request-id"]))
    bad = client.put("/-/routers/sentiment/weights", json={"weights": {"v1": -1}})
    print("bad weights:", bad.status_code, bad.json()["error"]["message"])
    client.put("/-/routers/sentiment/weights", json={"weights": {"v1": 50, "v2": 50}})
    labels = [client.post("/classify", params={"text": "a great day"}).json()["label"] for _ in range(10)]
    print("after 50/50:", sorted(labels))

    # Blue/green: warm v2 up, send it everything at once, keep v1 ready for a switch-back.
    switched = server.router("sentiment").switch("v2", warmup={"args": ["hello"]}, bake_s=30)
    print("switched weights:", switched["weights"])
    print("back to:", server.router("sentiment").switch_back()["weights"])

    # Post an outcome later, against the request id a response carried.
    rid = client.post("/classify", params={"text": "good"}).headers["x-request-id"]
    posted = client.post(
        "/-/routers/sentiment/outcomes", json={"request_id": rid, "name": "clicked", "value": 1}
    )
    print("outcome credited to:", posted.json()["credited"])
    view = client.get("/-/routers/sentiment").json()
    print("shadow agreement:", view["shadow_comparison"].get("v3", {}).get("agreement_rate") is not None)

"""A guarded API: API keys with scopes, rate limits and CORS (see docs/security.md).

python examples/security/app.py     # serve on a free port, call it with each demo key, stop
servekit serve examples/security/app.py:app --api-keys examples/security/keys.yaml \\
    --rate-limit "20/s burst 40" --cors-origin http://localhost:3000
curl -H "Authorization: Bearer sk_demo_reader_key_only_for_this_example_01" \\
    -d '{"text": "a great film"}' http://127.0.0.1:8000/predict
"""

from __future__ import annotations

from pathlib import Path

import httpx
from pydantic import BaseModel

import servekit as sk

KEYS_FILE = Path(__file__).parent / "keys.yaml"
DEMO_KEYS = {  # demo keys whose hashes are in keys.yaml: never use them outside this example
    "reader": "sk_demo_reader_key_only_for_this_example_01",  # invoke:/predict*
    "ops": "sk_demo_ops_key_only_for_this_example_0002",  # admin, metrics
    "trial": "sk_demo_trial_key_only_for_this_example_03",  # invoke, at most 3 an hour
    "expired": "sk_demo_expired_key_only_for_this_example_4",  # expired on 2024-01-01
}


class Review(BaseModel):
    text: str


@sk.deployment
class Sentiment:
    @sk.endpoint("/predict")
    async def predict(self, review: Review) -> dict:
        positive = sum(word in review.text for word in ("great", "good", "loved"))
        return {"label": "positive" if positive else "negative"}

    @sk.endpoint("/explain")
    async def explain(self, review: Review) -> dict:
        return {"words": review.text.split()}


app = Sentiment.bind()


def call(http: httpx.Client, path: str, key: str | None = None) -> str:
    """One request, as 'status error-type-or-body'."""
    headers = {"Authorization": f"Bearer {DEMO_KEYS[key]}"} if key else {}
    if path.startswith("/-/"):
        response = http.get(path, headers=headers)
    else:
        response = http.post(path, json={"text": "a great film"}, headers=headers)
    body = response.json()
    return f"{response.status_code} {body['error']['type'] if 'error' in body else body}"


def main() -> None:
    with sk.serve(
        app,
        port=0,
        blocking=False,
        api_keys=KEYS_FILE,
        rate_limit="20/s burst 40",  # per key (or per client address without one)
        cors=["http://localhost:3000"],
    ) as server:
        http = httpx.Client(base_url=server.url, timeout=30)
        print("no key on /predict:", call(http, "/predict"))
        print("reader on /predict:", call(http, "/predict", "reader"))
        print("reader on /explain:", call(http, "/explain", "reader"))
        print("reader on /-/status:", call(http, "/-/status", "reader"))
        print("ops on /-/status:", call(http, "/-/status", "ops").split(" ")[0])
        print("expired on /predict:", call(http, "/predict", "expired"))
        trial = [call(http, "/explain", "trial").split(" ")[0] for _ in range(5)]
        print("trial five times:", " ".join(trial))
        headers = {"x-api-key": DEMO_KEYS["reader"]}
        limits = http.post("/predict", json={"text": "good"}, headers=headers).headers
        left = int(limits["RateLimit-Remaining"])  # refills at 20/s: how many depends on timing
        policy = f"{limits['RateLimit-Limit']} ({limits['RateLimit-Policy']})"
        print("reader's rate limit:", f"{policy}, used: {left < 40}")
        print("health without a key:", http.get("/healthz").status_code)


if __name__ == "__main__":
    main()

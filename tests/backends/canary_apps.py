"""The app the rollout tests serve: three canaries that decide on their own, one to operate, one A/B split.

```
Api ──/shift──> split "shift"  (v1 answers "a"; v2 answers "b": the label distribution shifts)
    ──/errors─> split "errors" (v2 fails every 20th call: 5%; Api answers 200 either way)
    ──/same───> split "same"   (v2 answers like v1: promotes to 100%)
    ──/manual─> split "manual" (no canary until a test starts one)
    ──/ab─────> split "ab"     (records outcome "converted", higher on "y")
```

The canaries start with the app: 50% candidate, then 100%; `min_samples` small so a test
takes seconds; the rollback ones bake long (`ROLLBACK_BAKE_S`) so only a failing check can end
them, within their first step's bake window.
"""

from __future__ import annotations

import servekit as sk

ROLLBACK_BAKE_S = 120.0
MIN_SAMPLES = 50


@sk.deployment(resources=sk.Resources(cpus=0.1))  # eleven deployments fit a small test cluster
class Labeler:
    def __init__(self, label: str, fail_every: int = 0) -> None:
        self.label = label
        self.fail_every = fail_every
        self.calls = 0

    async def __call__(self, x: int) -> str:
        self.calls += 1
        if self.fail_every and self.calls % self.fail_every == 0:
            raise RuntimeError(f"candidate failure {self.calls}")
        return self.label


def label_of(result: object) -> object:
    """The declared output of a Labeler's answer: the answer itself."""
    return result


@sk.deployment(resources=sk.Resources(cpus=0.1))
class Api:
    def __init__(self, **routers: sk.DeploymentHandle) -> None:
        self.routers = routers
        self.served = 0

    async def _ask(self, router: str, x: int) -> dict[str, object]:
        try:
            return {"label": await self.routers[router](x)}
        except Exception:  # the router saw the failure; the client still gets an answer
            return {"label": None, "failed": True}

    @sk.endpoint("/shift", methods=["GET"])
    async def shift(self, x: int = 0) -> dict[str, object]:
        return await self._ask("shift", x)

    @sk.endpoint("/errors", methods=["GET"])
    async def errors(self, x: int = 0) -> dict[str, object]:
        return await self._ask("errors", x)

    @sk.endpoint("/same", methods=["GET"])
    async def same(self, x: int = 0) -> dict[str, object]:
        return await self._ask("same", x)

    @sk.endpoint("/manual", methods=["GET"])
    async def manual(self, x: int = 0) -> dict[str, object]:
        return await self._ask("manual", x)

    @sk.endpoint("/ab", methods=["GET"])
    async def ab(self, x: int = 0) -> dict[str, object]:
        answer = await self._ask("ab", x)
        self.served += 1
        sk.record_outcome("converted", (1.0 if answer["label"] == "y" else 0.5) + (self.served % 4) / 10)
        return answer


def _canary(**options: object) -> sk.Canary:
    settings: dict[str, object] = {
        "baseline": "v1",
        "candidate": "v2",
        "steps": [50, 100],
        "bake_s": ROLLBACK_BAKE_S,
        "min_samples": MIN_SAMPLES,
        "max_p95_ratio": 100.0,  # latency is not what these canaries test (a loaded CI machine is noisy)
        "output": label_of,
    }
    settings.update(options)
    return sk.Canary(**settings)  # type: ignore[arg-type]


def _pair(prefix: str, v2: sk.Application) -> dict[str, sk.Application]:
    return {"v1": Labeler.options(name=f"{prefix}V1").bind("a"), "v2": v2}


def canary_app() -> sk.Application:
    """Api with the five routers the module docstring draws."""
    shift = sk.split(
        _pair("Shift", Labeler.options(name="ShiftV2").bind("b")), name="shift", canary=_canary()
    )
    errors = sk.split(
        _pair("Errors", Labeler.options(name="ErrorsV2").bind("a", fail_every=20)),
        name="errors",
        canary=_canary(),
    )
    same = sk.split(
        _pair("Same", Labeler.options(name="SameV2").bind("a")), name="same", canary=_canary(bake_s=1.0)
    )
    manual = sk.split(
        {"m1": Labeler.options(name="ManualM1").bind("a"), "m2": Labeler.options(name="ManualM2").bind("a")},
        weights={"m1": 100},
        name="manual",
    )
    ab = sk.split(
        {"x": Labeler.options(name="AbX").bind("x"), "y": Labeler.options(name="AbY").bind("y")}, name="ab"
    )
    return Api.bind(shift=shift, errors=errors, same=same, manual=manual, ab=ab)

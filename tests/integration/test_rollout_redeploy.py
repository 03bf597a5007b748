"""A new version deployed beside the running one, then analysed: the canary a redeploy declares.

The flow a user runs from the CLI with `servekit serve --reload` (edit the app: add the `v2`
arm with `canary=sk.Canary(...)`, save) or from Python with `handle.redeploy(app)`: the new
arm's replicas start beside the old ones, and the canary it declares starts on the live router.
"""

from __future__ import annotations

from collections.abc import Callable

import servekit as sk


@sk.deployment
class Labeler:
    def __init__(self, label: str) -> None:
        self.label = label

    async def __call__(self, x: int) -> str:
        return self.label


@sk.deployment
class Api:
    def __init__(self, clf: sk.DeploymentHandle) -> None:
        self.clf = clf

    async def __call__(self, x: int) -> str:
        label: str = await self.clf(x)
        return label


def _label(result: object) -> object:
    return result


def version_1() -> sk.Application:
    return Api.bind(sk.split({"v1": Labeler.options(name="ClfV1").bind("a")}, name="clf"))


def version_2() -> sk.Application:
    arms = {"v1": Labeler.options(name="ClfV1").bind("a"), "v2": Labeler.options(name="ClfV2").bind("a")}
    canary = sk.Canary(
        baseline="v1", candidate="v2", steps=[50, 100], bake_s=0.5, min_samples=20, output=_label
    )
    return Api.bind(sk.split(arms, name="clf", canary=canary))


def test_a_redeploy_that_adds_an_arm_with_a_canary_deploys_it_beside_and_promotes_it(
    wait_until: Callable[..., None],
) -> None:
    with sk.run(version_1()) as app:
        assert [app(i).result(timeout=10) for i in range(5)] == ["a"] * 5
        app.redeploy(version_2())
        control = app.router("clf")
        assert control.canary.status()["baseline"] == "v1"

        def completed() -> bool:
            for i in range(20):
                assert app(i).result(timeout=10) == "a"  # every call answers while it promotes
            return bool(control.canary.status()["state"] == "completed")

        wait_until(completed, "the redeployed canary to promote v2 to 100%")
        view = app.status()["routers"]["clf"]
        assert view["weights"] == {"v1": 0.0, "v2": 100.0}
        events = control.canary.status()["events"]
        assert [event["kind"] for event in events] == ["start", "complete"]
        assert events[-1]["checks"], events[-1]  # the decision carries its figures

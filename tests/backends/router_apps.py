"""The app the routers' behaviour tests serve: splits at depth 1 and 2, sticky, shadows, blue/green.

```
Api ──/classify──> Mid ──> split "clf" (v1: ModelV1, v2: ModelV2; shadows: Broken, Sleepy)
    ──/user──────> UserMid ──> split "sticky" (header:x-user-id; a: ModelA, b: ModelB)
    ──/color─────> split "bg" (blue: Blue, green: Green)
```
"""

from __future__ import annotations

import asyncio

import servekit as sk


@sk.deployment
class Model:
    def __init__(self, tag: str) -> None:
        self.tag = tag

    async def __call__(self, x: int) -> str:
        return self.tag


@sk.deployment
class Broken:
    async def __call__(self, x: int) -> str:
        raise RuntimeError("the shadow crashed")


@sk.deployment
class Sleepy:
    async def __call__(self, x: int) -> str:
        await asyncio.sleep(1.0)
        return "v1"


@sk.deployment
class Mid:
    def __init__(self, model: sk.DeploymentHandle) -> None:
        self.model = model

    async def __call__(self, x: int) -> str:
        result: str = await self.model(x)
        return result


@sk.deployment
class Api:
    def __init__(
        self, mid: sk.DeploymentHandle, sticky: sk.DeploymentHandle, bg: sk.DeploymentHandle
    ) -> None:
        self.mid, self.sticky, self.bg = mid, sticky, bg

    @sk.endpoint("/classify", methods=["GET"])
    async def classify(self, x: int = 0) -> dict[str, str]:
        return {"arm": await self.mid(x)}

    @sk.endpoint("/user", methods=["GET"])
    async def user(self, x: int = 0) -> dict[str, str]:
        sk.record_outcome("clicked", 1)
        return {"arm": await self.sticky(x)}

    @sk.endpoint("/color", methods=["GET"])
    async def color(self, x: int = 0) -> dict[str, str]:
        return {"arm": await self.bg(x)}


def router_app(mid_version: str = "1") -> sk.Application:
    """Api with three routers, as the module docstring draws (`mid_version`: Mid's version label)."""
    clf = sk.split(
        {"v1": Model.options(name="ModelV1").bind("v1"), "v2": Model.options(name="ModelV2").bind("v2")},
        weights={"v1": 3, "v2": 1},
        name="clf",
        shadow={"broken": Broken.bind(), "sleepy": Sleepy.bind()},
        shadow_fraction=0.5,
    )
    sticky = sk.split(
        {"a": Model.options(name="ModelA").bind("a"), "b": Model.options(name="ModelB").bind("b")},
        name="sticky",
        sticky="header:x-user-id",
    )
    bg = sk.split(
        {"blue": Model.options(name="Blue").bind("blue"), "green": Model.options(name="Green").bind("green")},
        weights={"blue": 100},
        name="bg",
    )
    mid = Mid.options(version=mid_version).bind(clf)
    return Api.bind(mid, Mid.options(name="UserMid").bind(sticky), bg)

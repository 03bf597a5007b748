"""Two deployments from two modules, only one of which imports `helpers.py` (served by the
`--reload` tests from a temporary copy of this folder)."""

from helpers import check, greet
from stages import Preprocess

import servekit as sk


@sk.deployment
class Greeter:
    def __init__(self, pre: sk.DeploymentHandle) -> None:
        check()
        self.pre = pre

    @sk.endpoint("/greet", methods=["GET"])
    async def greet(self, name: str) -> dict[str, str]:
        return {"message": greet(await self.pre(name))}


app = Greeter.bind(Preprocess.bind())

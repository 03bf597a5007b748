from pydantic import BaseModel

import servekit as sk


class Greeting(BaseModel):
    name: str


@sk.deployment
class Hello:
    @sk.endpoint("/hello")
    async def hello(self, req: Greeting) -> dict:
        return {"message": f"hello, {req.name}"}


app = Hello.bind()

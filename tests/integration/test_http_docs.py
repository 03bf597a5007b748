"""`GET /docs` over real HTTP: the page, every asset it references (right content types), the
app's OpenAPI URL, gzip, and who turns it off; the missing-package answer in-process."""

from __future__ import annotations

from collections.abc import Callable
from html.parser import HTMLParser

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import PlainTextResponse

import servekit as sk
from servekit._http.docs_ui import DocsUI, asset_names, docs_page

pytestmark = pytest.mark.integration

StartServer = Callable[..., sk.Server]


@sk.deployment
class Shop:
    @sk.endpoint("/items")
    async def add(self, name: str, price: float) -> dict[str, float]:
        """Add an item."""
        return {name: price}


@sk.deployment
class Manual:
    @sk.endpoint("/docs/{page}", methods=["GET"])
    async def page(self, page: str) -> str:
        return f"manual page {page}"


@sk.deployment
class Raw:
    async def __call__(self, request: Request) -> PlainTextResponse:
        return PlainTextResponse(f"raw {request.url.path}")


class _Links(HTMLParser):
    """The URLs a page loads (`<link href>`, `<script src>`) and its `data-openapi-url`."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.openapi_url: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        for key in ("href", "src"):
            if values.get(key):
                self.urls.append(str(values[key]))
        if values.get("data-openapi-url"):
            self.openapi_url = values["data-openapi-url"]


def _links(page: str) -> _Links:
    parser = _Links()
    parser.feed(page)
    return parser


EXPECTED_TYPES = {".css": "text/css", ".js": "text/javascript", ".png": "image/png"}


def test_docs_page_and_every_asset_it_loads_are_served(serve_app: StartServer) -> None:
    server = serve_app(Shop.bind())
    with httpx.Client(base_url=server.url, timeout=10) as client:
        page = client.get("/docs")
        assert page.status_code == 200
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        assert "<title>Shop - API docs</title>" in page.text
        links = _links(page.text)
        assert sorted(links.urls) == sorted(f"/docs/{name}" for name in asset_names())
        for url in links.urls:
            asset = client.get(url)
            assert asset.status_code == 200, url
            suffix = url[url.rindex(".") :]
            assert asset.headers["content-type"].split(";")[0] == EXPECTED_TYPES[suffix], url
            assert len(asset.content) > 0
        assert links.openapi_url == "/openapi.json"
        document = client.get(links.openapi_url).json()
        assert document["info"]["title"] == "Shop"
        assert "/items" in document["paths"]
        assert "/docs" not in document["paths"]


def test_the_bundle_is_swagger_ui_5_which_renders_openapi_3_1(serve_app: StartServer) -> None:
    server = serve_app(Shop.bind())
    with httpx.Client(base_url=server.url, timeout=10) as client:
        bundle = client.get("/docs/swagger-ui-bundle.js").text
        start = client.get("/docs/servekit-docs.js").text
    assert "SwaggerUIBundle" in bundle
    assert '"5.' in bundle  # Swagger UI 4 refuses an `openapi: 3.1.0` document
    assert "root.dataset.openapiUrl" in start


def test_assets_are_gzipped_for_clients_that_accept_it(serve_app: StartServer) -> None:
    server = serve_app(Shop.bind())
    url = f"{server.url}/docs/swagger-ui-bundle.js"
    with httpx.Client(timeout=10) as client:
        plain = client.get(url, headers={"accept-encoding": "identity"})
        zipped = client.get(url, headers={"accept-encoding": "gzip"})
        head = client.head(url, headers={"accept-encoding": "identity"})
    assert "content-encoding" not in plain.headers
    assert zipped.headers["content-encoding"] == "gzip"
    assert zipped.content == plain.content  # httpx decodes it
    assert int(zipped.headers["content-length"]) < len(plain.content) // 2
    assert head.status_code == 200
    assert head.content == b""
    assert int(head.headers["content-length"]) == len(plain.content)
    assert plain.headers["cache-control"].startswith("public")


def test_docs_refuse_other_methods_and_unknown_assets(serve_app: StartServer) -> None:
    server = serve_app(Shop.bind())
    with httpx.Client(base_url=server.url, timeout=10) as client:
        posted = client.post("/docs")
        missing = client.get("/docs/nothing.js")
    assert posted.status_code == 405
    assert posted.headers["allow"] == "GET, HEAD"
    assert posted.json()["error"]["type"] == "method_not_allowed"
    assert missing.status_code == 404
    assert "swagger-ui-bundle.js" in missing.json()["error"]["message"]


def test_docs_off_leaves_the_path_to_the_app(serve_app: StartServer) -> None:
    off = serve_app(Shop.bind(), docs=False)
    raw = serve_app(Raw.bind())  # a raw ingress owns every path: no /docs unless asked for
    raw_on = serve_app(Raw.bind(), docs=True)
    manual = serve_app(Manual.bind())  # an endpoint under /docs keeps it
    with httpx.Client(timeout=10) as client:
        assert client.get(f"{off.url}/docs").status_code == 404
        assert client.get(f"{raw.url}/docs").text == "raw /docs"
        assert client.get(f"{raw_on.url}/docs").headers["content-type"].startswith("text/html")
        assert client.get(f"{manual.url}/docs/intro").text == "manual page intro"


async def test_docs_without_the_package_answer_501_naming_it() -> None:
    async def app(scope: object, receive: object, send: object) -> None:
        raise AssertionError("the docs layer must answer /docs itself")

    layer = DocsUI(app, title="Shop", package="servekit_no_such_package")  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=layer), base_url="http://t") as client:
        answer = await client.get("/docs")
    assert answer.status_code == 501
    error = answer.json()["error"]
    assert error["type"] == "docs_unavailable"
    assert "pip install 'openapi-ui-bundles" in error["message"]
    assert "/openapi.json" in error["message"]


async def test_an_app_mounted_under_a_prefix_serves_docs_there() -> None:
    async def app(scope: object, receive: object, send: object) -> None:
        raise AssertionError("the docs layer must answer /docs itself")

    layer = DocsUI(app, title="Shop")  # type: ignore[arg-type]
    transport = httpx.ASGITransport(app=layer, root_path="/api")
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        page = await client.get("/api/docs")
        asset = await client.get("/api/docs/swagger-ui.css")
    assert _links(page.text).openapi_url == "/api/openapi.json"
    assert asset.status_code == 200


def test_the_page_carries_the_root_path_of_a_mounted_app() -> None:
    links = _links(docs_page("A <b>", root_path="/api/v1"))
    assert links.openapi_url == "/api/v1/openapi.json"
    assert all(url.startswith("/api/v1/docs/") for url in links.urls)
    assert "A &lt;b&gt;" in docs_page("A <b>")

"""`GET /docs`: an interactive API explorer (Swagger UI) for the app's `/openapi.json`, served offline.

An ASGI layer in front of the routes: it answers `GET`/`HEAD` on `/docs` (the page) and
`/docs/<asset>` (Swagger UI's JS, CSS and icons, read from the installed `openapi-ui-bundles`
package, and a small start-up script of servekit's own), and hands every other request on.
Nothing is fetched from a CDN, so the page works on a machine without internet access. When the
package is missing, `/docs` answers 501 with the install command.
"""

from __future__ import annotations

import functools
import gzip
import html
import importlib
import re
from dataclasses import dataclass
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

from servekit._http.errors import json_error
from servekit.errors import MethodNotAllowedError, NotFoundError

DOCS_PATH = "/docs"
OPENAPI_PATH = "/openapi.json"
SWAGGER_UI_PACKAGE = "openapi_ui_bundles.swagger_ui"
INSTALL_HINT = "pip install 'openapi-ui-bundles>=0.3'"

_VENDOR_ASSETS = {
    "swagger-ui.css": "text/css; charset=utf-8",
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "favicon-32x32.png": "image/png",
    "favicon-16x16.png": "image/png",
}
_START_SCRIPT_NAME = "servekit-docs.js"
_START_SCRIPT = b"""\
window.addEventListener("load", function () {
  var root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.dataset.openapiUrl,
    dom_id: "#swagger-ui",
    deepLinking: true,
    persistAuthorization: true,
    displayRequestDuration: true,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout"
  });
});
"""
_PAGE = """\
<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} - API docs</title>
<link rel="stylesheet" type="text/css" href="{assets}/swagger-ui.css">
<link rel="icon" type="image/png" href="{assets}/favicon-32x32.png" sizes="32x32">
<link rel="icon" type="image/png" href="{assets}/favicon-16x16.png" sizes="16x16">
</head>
<body>
<div id="swagger-ui" data-openapi-url="{openapi}"></div>
<script src="{assets}/swagger-ui-bundle.js" charset="utf-8"></script>
<script src="{assets}/{start}" charset="utf-8"></script>
</body>
</html>
"""
_SOURCE_MAP = re.compile(rb"/\*# sourceMappingURL=[^*]*\*/")
_ASSET_CACHE = "public, max-age=86400"
_GZIP_MIN_BYTES = 1024


@dataclass(frozen=True)
class Asset:
    """One file the docs page loads: its bytes, content type and, when worth it, gzipped bytes."""

    body: bytes
    content_type: str
    gzipped: bytes | None


def asset_names() -> tuple[str, ...]:
    """The names served under `/docs/`."""
    return (*_VENDOR_ASSETS, _START_SCRIPT_NAME)


def docs_page(title: str, root_path: str = "") -> str:
    """The HTML of `/docs` for an app named `title` mounted at `root_path` (usually "")."""
    base = html.escape(root_path, quote=True)
    return _PAGE.format(
        title=html.escape(title),
        assets=f"{base}{DOCS_PATH}",
        openapi=f"{base}{OPENAPI_PATH}",
        start=_START_SCRIPT_NAME,
    )


@functools.cache
def vendor_folder(package: str = SWAGGER_UI_PACKAGE) -> Path | None:
    """The folder of Swagger UI's files in the installed `package`, or None when it is missing."""
    try:
        module = importlib.import_module(package)
    except ImportError:
        return None
    folder = Path(getattr(module, "static_path", Path(module.__file__ or ".").parent / "vendor"))
    return folder if all((folder / name).is_file() for name in _VENDOR_ASSETS) else None


@functools.cache
def load_assets(folder: Path) -> dict[str, Asset]:
    """Every asset's bytes, read once per folder and kept (about 1.6 MB, 0.5 MB gzipped)."""
    files = {name: ((folder / name).read_bytes(), kind) for name, kind in _VENDOR_ASSETS.items()}
    css, kind = files["swagger-ui.css"]
    files["swagger-ui.css"] = (_SOURCE_MAP.sub(b"", css), kind)  # the .map is not shipped: no 404
    files[_START_SCRIPT_NAME] = (_START_SCRIPT, "text/javascript; charset=utf-8")
    return {name: Asset(body, kind, _gzip(body, kind)) for name, (body, kind) in files.items()}


def _gzip(body: bytes, content_type: str) -> bytes | None:
    if len(body) < _GZIP_MIN_BYTES or content_type.startswith("image/"):
        return None
    return gzip.compress(body, compresslevel=6, mtime=0)


class DocsUI:
    """Serve the API explorer at `/docs` and its assets at `/docs/<name>`; pass the rest to `app`."""

    def __init__(self, app: ASGIApp, title: str, package: str = SWAGGER_UI_PACKAGE) -> None:
        self.app = app
        self.title = title
        self.package = package

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = route_path(scope) if scope["type"] == "http" else ""
        if path != DOCS_PATH and not path.startswith(DOCS_PATH + "/"):
            await self.app(scope, receive, send)
            return
        await self._answer(scope, path, send)

    async def _answer(self, scope: Scope, path: str, send: Send) -> None:
        method = scope["method"]
        if method not in ("GET", "HEAD"):
            refused = MethodNotAllowedError(
                f"{method} is not allowed on {path}; allowed: GET, HEAD", ["GET", "HEAD"]
            )
            await _send(send, method, 405, _error_headers(refused.headers()), _error_body(refused))
            return
        folder = vendor_folder(self.package)
        if folder is None:
            await _send(send, method, 501, [(b"content-type", b"application/json")], _missing_body())
            return
        if path in (DOCS_PATH, DOCS_PATH + "/"):
            page = docs_page(self.title, scope.get("root_path", "")).encode()
            headers = [(b"content-type", b"text/html; charset=utf-8"), (b"cache-control", b"no-cache")]
            await _send(send, method, 200, headers, page)
            return
        asset = load_assets(folder).get(path[len(DOCS_PATH) + 1 :])
        if asset is None:
            names = ", ".join(asset_names())
            exc = NotFoundError(f"no docs asset at {path}; the docs page is {DOCS_PATH}, its assets: {names}")
            await _send(send, method, exc.status_code, _error_headers({}), _error_body(exc))
            return
        await self._send_asset(scope, method, asset, send)

    async def _send_asset(self, scope: Scope, method: str, asset: Asset, send: Send) -> None:
        headers = [(b"content-type", asset.content_type.encode()), (b"cache-control", _ASSET_CACHE.encode())]
        body = asset.body
        if asset.gzipped is not None:
            headers.append((b"vary", b"accept-encoding"))
            if _accepts_gzip(scope):
                headers.append((b"content-encoding", b"gzip"))
                body = asset.gzipped
        await _send(send, method, 200, headers, body)


def route_path(scope: Scope) -> str:
    """The request's path below the app's mount point (`root_path`), as the router sees it."""
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    return path[len(root) :] or "/" if root and path.startswith(root + "/") else path


def _accepts_gzip(scope: Scope) -> bool:
    accepted = next((v for k, v in scope["headers"] if k == b"accept-encoding"), b"")
    return b"gzip" in accepted.lower()


def _missing_body() -> bytes:
    message = (
        f"the interactive API docs need Swagger UI's files from the package 'openapi-ui-bundles', "
        f"which is not installed: {INSTALL_HINT} (the OpenAPI document is at {OPENAPI_PATH})"
    )
    response = json_error(501, {"type": "docs_unavailable", "message": message})
    return bytes(response.body)


def _error_body(exc: NotFoundError | MethodNotAllowedError) -> bytes:
    return bytes(json_error(exc.status_code, exc.to_dict()).body)


def _error_headers(extra: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [
        (b"content-type", b"application/json"),
        *((k.lower().encode(), v.encode()) for k, v in extra.items()),
    ]


async def _send(
    send: Send, method: str, status: int, headers: list[tuple[bytes, bytes]], body: bytes
) -> None:
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})

"""What `servekit bench` sends: the target URL, and one HTTP/1.1 request's bytes, built once.

A URL, a method, headers and a body in; the exact bytes written for every request out. Bodies
come from a file, inline JSON, or a template: an Open Inference Protocol v2 `infer` request
(`oip`, what Triton and KServe serve) or an OpenAI chat completion request (`openai`).
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from servekit._version import __version__

TEMPLATES = ("oip", "openai")
OIP_DATATYPES = (
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BYTES",
)


class PayloadError(ValueError):
    """The URL, a header, the body or a template option is unusable; the message says which."""


@dataclass(frozen=True)
class Target:
    """Where requests go: scheme, host, port and the path with its query."""

    scheme: str
    host: str
    port: int
    path: str

    @property
    def url(self) -> str:
        """The target as a URL."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{self.path}"

    def with_path(self, path: str) -> Target:
        """The same server, another path."""
        return Target(self.scheme, self.host, self.port, path)


def parse_target(url: str) -> Target:
    """The `Target` of an http:// or https:// URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PayloadError(f"not an http(s) URL: {url!r}; like http://127.0.0.1:8000/predict")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise PayloadError(f"bad port in {url!r}") from None
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(parts.scheme, parts.hostname, port, path)


def parse_header(text: str) -> tuple[str, str]:
    """A `Name: value` header."""
    name, sep, value = text.partition(":")
    if not sep or not name.strip() or any(c in name for c in " \r\n") or any(c in value for c in "\r\n"):
        raise PayloadError(f"bad header {text!r}; like -H 'Authorization: Bearer KEY'")
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        raise PayloadError(f"header {text!r} has characters HTTP/1.1 headers cannot carry") from None
    return name.strip(), value.strip()


def request_bytes(
    method: str,
    target: Target,
    body: bytes | None,
    content_type: str | None,
    headers: Sequence[tuple[str, str]] = (),
) -> bytes:
    """The bytes of one keep-alive HTTP/1.1 request."""
    host = target.host if target.port in (80, 443) else f"{target.host}:{target.port}"
    lines = [f"{method} {target.path} HTTP/1.1", f"Host: {host}", f"User-Agent: servekit-bench/{__version__}"]
    given = {name.lower() for name, _ in headers}
    if "accept" not in given:
        lines.append("Accept: */*")
    if body is not None:
        if content_type and "content-type" not in given:
            lines.append(f"Content-Type: {content_type}")
        lines.append(f"Content-Length: {len(body)}")
    lines += [f"{name}: {value}" for name, value in headers]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head + (body or b"")


def json_body(text: str) -> bytes:
    """`text` checked to be JSON, as bytes."""
    try:
        json.loads(text)
    except json.JSONDecodeError as exc:
        raise PayloadError(f"--json is not valid JSON ({exc}): {text[:80]!r}") from None
    return text.encode()


def parse_shape(text: str) -> list[int]:
    """A tensor shape like `1,3`."""
    try:
        shape = [int(part) for part in text.split(",")]
    except ValueError:
        raise PayloadError(f"bad shape {text!r}; like --shape 1,3") from None
    if not shape or any(dim < 1 for dim in shape):
        raise PayloadError(f"bad shape {text!r}: every dimension must be at least 1; like --shape 1,3")
    return shape


@dataclass(frozen=True)
class TensorSpec:
    """One input of an OIP model: name, datatype and a concrete shape."""

    name: str
    datatype: str
    shape: list[int]


def oip_inputs_from_metadata(metadata: dict[str, Any], shape: list[int] | None) -> list[TensorSpec]:
    """The inputs of an OIP model's metadata (`GET /v2/models/NAME`), with every variable
    dimension (-1) taken from `shape` where it has that dimension, else 1."""
    inputs = metadata.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise PayloadError("the model's metadata lists no inputs; give --input-name, --datatype and --shape")
    specs = []
    for entry in inputs:
        dims = [int(d) for d in entry.get("shape", [-1])]
        concrete = [
            d if d > 0 else (shape[i] if shape is not None and i < len(shape) else 1)
            for i, d in enumerate(dims)
        ]
        specs.append(TensorSpec(str(entry["name"]), str(entry.get("datatype", "FP32")), concrete))
    return specs


def oip_body(inputs: Sequence[TensorSpec], seed: int = 0) -> bytes:
    """An OIP v2 `infer` request body with seeded random data for each input."""
    rng = random.Random(seed)
    payload = {
        "inputs": [
            {"name": t.name, "shape": t.shape, "datatype": t.datatype, "data": _tensor_data(t, rng)}
            for t in inputs
        ]
    }
    return json.dumps(payload, separators=(",", ":")).encode()


def _tensor_data(tensor: TensorSpec, rng: random.Random) -> list[Any]:
    if tensor.datatype not in OIP_DATATYPES:
        raise PayloadError(f"unknown OIP datatype {tensor.datatype!r}; one of {', '.join(OIP_DATATYPES)}")
    size = 1
    for dim in tensor.shape:
        size *= dim
    if tensor.datatype == "BOOL":
        return [rng.random() < 0.5 for _ in range(size)]
    if tensor.datatype == "BYTES":
        return [f"item-{i}" for i in range(size)]
    if tensor.datatype.startswith("FP"):
        return [round(rng.uniform(-1, 1), 6) for _ in range(size)]
    low = 0 if tensor.datatype.startswith("U") else -100
    return [rng.randint(low, 100) for _ in range(size)]


def openai_body(model: str, prompt: str, max_tokens: int, stream: bool) -> bytes:
    """An OpenAI chat completion request body (`POST /v1/chat/completions`)."""
    payload: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
    }
    if stream:
        payload["stream"] = True
    return json.dumps(payload, separators=(",", ":")).encode()


def oip_path(model: str, version: str | None = None) -> str:
    """The OIP v2 infer path of `model`."""
    return f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"

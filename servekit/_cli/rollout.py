"""`servekit rollout`: see and change an app's traffic-split routers over its admin API.

``status [ROUTER]``, ``weights ROUTER ARM=WEIGHT ...``, ``switch ROUTER ARM [--bake-s S]
[--warmup-method M --warmup-arg JSON ...]``, ``switch-back ROUTER``, each with ``--url`` (a
servekit server; the requests go to its `/-/routers` API).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import urllib.error
import urllib.request
from typing import Any


class RolloutError(Exception):
    """The command failed; the message is one line saying why (the server's own message for a 4xx)."""


def add_parser(commands: Any) -> None:
    """Add the `rollout` command and its subcommands to `commands` (argparse subparsers)."""
    rollout = commands.add_parser("rollout", help="see and change traffic-split routers (weights, switch)")
    actions = rollout.add_subparsers(dest="action", required=True)
    status = actions.add_parser("status", help="routers, their arms, live weights and counters")
    status.add_argument("router", nargs="?", default=None)
    weights = actions.add_parser("weights", help="set a router's weights, like: weights clf v1=90 v2=10")
    weights.add_argument("router")
    weights.add_argument("weights", nargs="+", metavar="ARM=WEIGHT")
    switch = actions.add_parser("switch", help="blue/green: send all traffic to one arm at once")
    switch.add_argument("router")
    switch.add_argument("arm")
    switch.add_argument("--bake-s", type=float, default=60.0, help="seconds switch-back stays possible")
    switch.add_argument("--warmup-method", default=None, help="call this method on the arm first")
    switch.add_argument(
        "--warmup-arg", action="append", default=[], help="a JSON argument of the warm-up call"
    )
    back = actions.add_parser("switch-back", help="undo a router's last switch at once")
    back.add_argument("router")
    for parser in (status, weights, switch, back):
        where = parser.add_mutually_exclusive_group(required=True)
        where.add_argument("--url", help="a servekit server, like http://127.0.0.1:8000 (its /-/routers API)")
        where.add_argument("--address", help="a Ray cluster (auto, host:port, ray://host:10001)")
        parser.add_argument(
            "--app", default=None, help="with --address: the Serve app (default: the only one with routers)"
        )
        parser.add_argument("--json", action="store_true", help="print the answer as JSON")


def run(args: argparse.Namespace) -> str:
    """Carry out the parsed `rollout` command; returns what to print. Raises `RolloutError`."""
    answer = _on_cluster(args) if args.address is not None else _over_http(args)
    if args.json:
        return json.dumps(answer, indent=2)
    routers = answer["routers"] if "routers" in answer else {answer["name"]: answer}
    return render_routers(routers)


def _on_cluster(args: argparse.Namespace) -> dict[str, Any]:
    """The command carried out on a Ray cluster, through the backend's seam."""
    from servekit._runtime.backends import cluster_backend  # noqa: PLC0415
    from servekit.errors import ServekitError  # noqa: PLC0415

    if args.action == "switch" and args.warmup_method is not None:
        raise RolloutError("--warmup-method needs --url (the server makes the warm-up call)")
    operation, extra = {
        "status": ("status", ()),
        "weights": ("set_weights", (parse_weights(getattr(args, "weights", None) or []),)),
        "switch": ("switch", (getattr(args, "arm", None), getattr(args, "bake_s", 60.0))),
        "switch-back": ("switch_back", ()),
    }[args.action]
    try:
        return cluster_backend().cluster_router_operation(
            args.address, args.app, operation, args.router, *extra
        )
    except (ServekitError, ImportError) as exc:
        raise RolloutError(str(exc)) from None


def _over_http(args: argparse.Namespace) -> dict[str, Any]:
    """The command carried out through a server's `/-/routers` API."""
    base = args.url.rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise RolloutError(
            f"--url must start with http:// or https://, like http://127.0.0.1:8000; got {args.url!r}"
        )
    if args.action == "status":
        path = "/-/routers" if args.router is None else f"/-/routers/{args.router}"
        answer = _request("GET", base + path)
    elif args.action == "weights":
        answer = _request(
            "PUT", f"{base}/-/routers/{args.router}/weights", {"weights": parse_weights(args.weights)}
        )
    elif args.action == "switch":
        body: dict[str, Any] = {"to": args.arm, "bake_s": args.bake_s}
        if args.warmup_method is not None:
            body["warmup"] = {"method": args.warmup_method, "args": [_json_arg(a) for a in args.warmup_arg]}
        answer = _request("POST", f"{base}/-/routers/{args.router}/switch", body)
    else:
        answer = _request("POST", f"{base}/-/routers/{args.router}/switch-back")
    return answer


def parse_weights(pairs: list[str]) -> dict[str, float]:
    """``["v1=90", "v2=10"]`` as ``{"v1": 90.0, "v2": 10.0}``; raises `RolloutError` naming a bad pair."""
    weights: dict[str, float] = {}
    for pair in pairs:
        arm, sep, value = pair.partition("=")
        try:
            if not sep or not arm:
                raise ValueError
            weights[arm] = float(value)
        except ValueError:
            raise RolloutError(f"weights are ARM=NUMBER, like v1=90 v2=10; got {pair!r}") from None
    return weights


def render_routers(routers: dict[str, Any]) -> str:
    """Each router as a few lines: mode and weights, then each arm's share and counters, shadows."""
    if not routers:
        return "no routers"
    return "\n\n".join(_render_router(view) for view in routers.values())


def _render_router(view: dict[str, Any]) -> str:
    mode = view.get("mode", "?")
    extra = f", switched to {view['switched_to']}" if view.get("switched_to") else ""
    lines = [f"router {view.get('name')} ({mode}{extra}, sticky: {view.get('sticky') or 'no'})"]
    lines.append(
        f"  {'ARM':<14} {'DEPLOYMENT':<20} {'WEIGHT':>7} {'SHARE':>6} "
        f"{'CALLS':>7} {'ERRORS':>6} {'P95 MS':>7}"
    )
    shares = view.get("shares", {})
    for arm, info in view.get("arms", {}).items():
        p95 = "-" if info.get("p95_ms") is None else f"{info['p95_ms']:.1f}"
        down = "" if info.get("available", True) else "  (no replica: share redistributed)"
        lines.append(
            f"  {arm:<14} {info.get('deployment', ''):<20} {info.get('weight', 0):>7g} "
            f"{100 * shares.get(arm, 0):>5.1f}% {info.get('calls', 0):>7} "
            f"{info.get('errors', 0):>6} {p95:>7}{down}"
        )
    for arm, info in view.get("shadows", {}).items():
        compared = view.get("shadow_comparison", {}).get(arm, {})
        agreement = compared.get("agreement_rate")
        diff = compared.get("mean_absolute_difference")
        versus = (
            f"agreement {agreement:.1%}"
            if agreement is not None
            else f"mean abs diff {diff:.4g}"
            if diff is not None
            else "no pairs yet"
        )
        lines.append(
            f"  shadow {arm:<7} {info.get('deployment', ''):<20} calls {info.get('calls', 0)}, "
            f"errors {info.get('errors', 0)}, {versus}"
        )
    if view.get("shadows"):
        lines.append(
            f"  shadow drops: {view.get('shadow_drops', 0)} (fraction {view.get('shadow_fraction', 0):g})"
        )
    lines.extend(f"  note: {note}" for note in view.get("notes", []))
    return "\n".join(lines)


def _json_arg(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _request(method: str, url: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data, method=method, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            answer: dict[str, Any] = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        text = exc.read()[:500].decode(errors="replace")
        with contextlib.suppress(ValueError, KeyError, TypeError):
            text = json.loads(text)["error"]["message"]
        raise RolloutError(f"{url} answered {exc.code}: {text}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise RolloutError(f"cannot reach {url}: {getattr(exc, 'reason', exc)}") from None
    return answer

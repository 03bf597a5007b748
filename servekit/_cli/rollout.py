"""`servekit rollout`: see and change an app's traffic-split routers and canaries.

``status [ROUTER]``, ``weights ROUTER ARM=WEIGHT ...``, ``switch ROUTER ARM [--bake-s S]
[--warmup-method M --warmup-arg JSON ...]``, ``switch-back ROUTER``, ``canary ROUTER
--candidate ARM [--baseline ARM --steps 1,5,25,100 --bake-s S --min-samples N ...]``,
``pause|resume|abort ROUTER``, ``promote ROUTER [--full]``, each with ``--url`` (a servekit
server; the requests go to its `/-/routers` and `/-/rollouts` API) or ``--address`` (a Ray
cluster, through the app's router state actor).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import urllib.error
import urllib.request
from typing import Any

from servekit._cli.credentials import client_headers


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
    canary = actions.add_parser("canary", help="start a canary between two arms of a running router")
    canary.add_argument("router")
    canary.add_argument("--candidate", required=True, help="the arm rolled out")
    canary.add_argument(
        "--baseline", default=None, help="the arm rolled back to (default: the heaviest other)"
    )
    canary.add_argument("--steps", default=None, help="candidate percents, like 1,5,25,50,100")
    canary.add_argument("--bake-s", type=float, default=None, help="seconds each step runs at least")
    canary.add_argument("--min-samples", type=int, default=None, help="calls per arm before a check passes")
    canary.add_argument("--max-error-rate-increase", type=float, default=None)
    canary.add_argument("--max-p95-ratio", type=float, default=None)
    canary.add_argument("--confidence", type=float, default=None)
    operated = [canary]
    for action, said in (
        ("pause", "hold a canary's step (a failing check still rolls back)"),
        ("resume", "let a paused canary promote again"),
        ("promote", "move a canary to its next step now (--full: to 100%)"),
        ("abort", "roll a canary back to 100% baseline now"),
    ):
        parser = actions.add_parser(action, help=said)
        parser.add_argument("router")
        if action == "promote":
            parser.add_argument("--full", action="store_true", help="all the way to 100%")
        operated.append(parser)
    for parser in (status, weights, switch, back, *operated):
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
    if args.action in CANARY_ACTIONS:
        return render_canary(args.router, answer)
    routers = answer["routers"] if "routers" in answer else {answer["name"]: answer}
    return render_routers(routers)


CANARY_ACTIONS = ("canary", "pause", "resume", "promote", "abort")


def canary_body(args: argparse.Namespace) -> dict[str, Any]:
    """The `/-/rollouts/{router}/canary` body of `rollout canary`'s options (unset ones left out)."""
    body: dict[str, Any] = {"candidate": args.candidate}
    if args.steps is not None:
        try:
            body["steps"] = [float(step) for step in args.steps.split(",")]
        except ValueError:
            raise RolloutError(f"--steps are percents like 1,5,25,50,100; got {args.steps!r}") from None
    for option in (
        "baseline",
        "bake_s",
        "min_samples",
        "max_error_rate_increase",
        "max_p95_ratio",
        "confidence",
    ):
        value = getattr(args, option)
        if value is not None:
            body[option] = value
    return body


def _on_cluster(args: argparse.Namespace) -> dict[str, Any]:
    """The command carried out on a Ray cluster, through the backend's seam."""
    from servekit._runtime.backends import cluster_backend  # noqa: PLC0415
    from servekit.errors import ServekitError  # noqa: PLC0415

    if args.action == "switch" and args.warmup_method is not None:
        raise RolloutError("--warmup-method needs --url (the server makes the warm-up call)")
    extra: tuple[Any, ...]
    if args.action == "canary":
        operation, extra = "start_canary", (canary_body(args),)
    elif args.action in CANARY_ACTIONS:
        operation, extra = "canary_action", (args.action, bool(getattr(args, "full", False)))
    else:
        operation, extra = _CLUSTER_OPERATIONS[args.action](args)
    try:
        answer = cluster_backend().cluster_router_operation(
            args.address, args.app, operation, args.router, *extra
        )
    except (ServekitError, ImportError) as exc:
        raise RolloutError(str(exc)) from None
    if args.action in CANARY_ACTIONS:
        return dict(answer.get("canary") or {})
    return answer


_CLUSTER_OPERATIONS: dict[str, Any] = {
    "status": lambda args: ("status", ()),
    "weights": lambda args: ("set_weights", (parse_weights(args.weights),)),
    "switch": lambda args: ("switch", (args.arm, args.bake_s)),
    "switch-back": lambda args: ("switch_back", ()),
}


def _over_http(args: argparse.Namespace) -> dict[str, Any]:
    """The command carried out through a server's `/-/routers` API."""
    base = args.url.rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise RolloutError(
            f"--url must start with http:// or https://, like http://127.0.0.1:8000; got {args.url!r}"
        )
    if args.action == "canary":
        return _request("POST", f"{base}/-/rollouts/{args.router}/canary", canary_body(args))
    if args.action in CANARY_ACTIONS:
        full: dict[str, Any] | None = {"full": True} if getattr(args, "full", False) else None
        return _request("POST", f"{base}/-/rollouts/{args.router}/{args.action}", full)
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
    lines.extend(_render_ab(view.get("ab") or {}))
    if view.get("canary"):
        lines.append("  " + render_canary(str(view.get("name")), view["canary"]).replace("\n", "\n  "))
    return "\n".join(lines)


def _render_ab(ab: dict[str, Any]) -> list[str]:
    """One line per outcome: each arm's mean with its 95% interval, then Welch's test between arms."""
    lines = []
    for outcome, comparisons in ab.get("comparisons", {}).items():
        means = []
        for arm, figures in ab.get("arms", {}).items():
            summary = figures.get("outcomes", {}).get(outcome)
            if summary is not None:
                interval = summary.get("ci95")
                said = f"[{interval[0]:.3g}, {interval[1]:.3g}]" if interval else "[-]"
                means.append(f"{arm} {summary['mean']:.3g} {said} n={summary['n']}")
        lines.append(f"  outcome {outcome}: " + "; ".join(means))
        for compared in comparisons:
            p_value = compared.get("p_value")
            shown = f"{p_value:.3g}" if isinstance(p_value, float) else str(p_value)
            verdict = "significant" if compared.get("significant") else "not significant"
            lines.append(
                f"    {' vs '.join(compared.get('arms', []))}: p = {shown} ({verdict}), "
                f"more samples per arm needed: {compared.get('more_samples_per_arm')}"
            )
    return lines


def render_canary(router: str, canary: dict[str, Any]) -> str:
    """A canary as a few lines: its state and step, the checks of its window, its latest events."""
    if not canary:
        return f"router {router}: no canary"
    steps = canary.get("steps", [])
    percent = canary.get("candidate_percent", 0)
    lines = [
        f"canary {canary.get('baseline')} -> {canary.get('candidate')}: {canary.get('state')}, "
        f"step {canary.get('step', 0) + 1}/{len(steps)} ({percent:g}% candidate), "
        f"steps {'/'.join(f'{step:g}' for step in steps)}, bake {canary.get('bake_s', 0):g} s"
    ]
    lines.extend(
        f"  check {check['name']:<12} {check['verdict']:<5} {check['reason']}"
        for check in canary.get("checks", [])
    )
    for event in canary.get("events", [])[-5:]:
        weights = " ".join(f"{arm}={weight:g}" for arm, weight in event.get("weights", {}).items())
        lines.append(f"  event {event['kind']:<9} by {event['by']:<8} [{weights}] {event['reason']}")
    return "\n".join(lines)


def _json_arg(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _request(method: str, url: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    data = None if body is None else json.dumps(body).encode()
    headers = {"content-type": "application/json", **client_headers()}
    request = urllib.request.Request(url, data, method=method, headers=headers)
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

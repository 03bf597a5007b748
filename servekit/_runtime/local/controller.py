"""The controller: a task that keeps every deployment of a local runtime at its desired state.

Each tick it, per deployment:
- feeds the autoscaler a metrics sample (every `metrics_interval_s`, and at once when requests
  wait at zero replicas) and adopts its decision as the target;
- health-checks replicas whose `health_check_period_s` has passed; a replica that fails or
  exceeds `health_check_timeout_s` is drained, stopped (killed if it hangs) and replaced;
- starts or retires replicas until the running count meets the target, waiting out the
  backoff after failed starts.
Replicas that die between ticks are removed by the runtime at once and wake the controller.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Protocol

from servekit._replica.autoscaling import MetricsSample
from servekit._runtime.local.deployment_state import DeploymentState
from servekit._runtime.replica_set import ReplicaSlot

logger = logging.getLogger("servekit.controller")
TICK_S = 0.1
UNHEALTHY_DRAIN_S = 5.0


class ControlledRuntime(Protocol):
    """What the controller needs of the runtime it keeps at its targets (`LocalRuntime`)."""

    @property
    def state(self) -> str:
        """The runtime's state: the controller starts and retires replicas only while "running"."""
        ...

    @property
    def states(self) -> dict[str, DeploymentState]:
        """Each deployment's state."""
        ...

    async def reconcile(self, state: DeploymentState) -> None:
        """Start or retire replicas until `state` runs its target."""
        ...

    async def retire(self, state: DeploymentState, slot: ReplicaSlot, grace_s: float) -> None:
        """Stop routing to `slot`, drain it for up to `grace_s`, then stop its replica."""
        ...


class Controller:
    """Reconciles a runtime's deployments with their targets; see the module docstring."""

    def __init__(self, runtime: ControlledRuntime) -> None:
        self._runtime = runtime
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._work: set[asyncio.Task[None]] = set()
        self._next_sample: dict[str, float] = {}

    def start(self) -> None:
        """Run the control loop on the current event loop."""
        self._wake = asyncio.Event()
        for state in self._runtime.states.values():
            state.replicas.on_wait = self.wake
        self._task = asyncio.get_running_loop().create_task(self._run(), name="servekit-controller")

    def wake(self) -> None:
        """Run the next tick now (a replica died, or a request waits at zero replicas)."""
        if self._wake is not None:
            self._wake.set()

    async def stop(self) -> None:
        """Stop the loop and any start, probe or retire it has under way."""
        tasks = [task for task in (self._task, *self._work) if task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._task = None

    async def _run(self) -> None:
        wake = self._wake
        assert wake is not None
        while True:
            try:
                self.tick(time.monotonic())
            except Exception:
                logger.exception("controller tick failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), TICK_S)
            wake.clear()

    def tick(self, now: float) -> None:
        """One pass over every deployment."""
        for state in list(self._runtime.states.values()):
            if state.replicas.on_wait is None:
                state.replicas.on_wait = self.wake
            if state.updating:
                continue
            self._autoscale(state, now)
            self._probe(state, now)
            self._reconcile(state, now)

    def _autoscale(self, state: DeploymentState, now: float) -> None:
        autoscaler = state.autoscaler
        config = state.node.deployment.config.autoscaling
        if autoscaler is None or config is None:
            return
        cold = state.target == 0 and state.replicas.queued > 0
        if now < self._next_sample.get(state.name, 0.0) and not cold:
            return
        self._next_sample[state.name] = now + config.metrics_interval_s
        autoscaler.observe(
            MetricsSample(
                at=now,
                running_replicas=state.running,
                ongoing_requests=state.replicas.ongoing,
                queued_requests=state.replicas.queued,
                latencies_ms=state.latencies.drain(),
            )
        )
        decision = autoscaler.decide(now, state.target)
        if decision.desired != state.target:
            logger.info(
                "deployment %r: scaling %d -> %d replicas: %s",
                state.name,
                state.target,
                decision.desired,
                decision.reason,
            )
            state.scaled["up" if decision.desired > state.target else "down"] += 1
            state.target = decision.desired

    def _probe(self, state: DeploymentState, now: float) -> None:
        config = state.node.deployment.config
        for slot in state.replicas.slots:
            if slot.probing or now - slot.last_probe < config.health_check_period_s:
                continue
            slot.probing = True
            self._spawn(self._check(state, slot, config.health_check_timeout_s))

    async def _check(self, state: DeploymentState, slot: ReplicaSlot, timeout_s: float) -> None:
        replica = slot.replica
        try:
            await asyncio.wait_for(replica.check_health(), timeout_s)
        except Exception as exc:
            if slot not in state.replicas.slots:
                return  # it died or was retired meanwhile
            detail = (
                f"did not answer its health check within {timeout_s:g} s"
                if isinstance(exc, TimeoutError)
                else f"failed its health check: {type(exc).__name__}: {exc}"
            )
            logger.error(
                "deployment %r: replica %s %s; replacing it", state.name, replica.context.replica_id, detail
            )
            slot.healthy = False
            state.health_check_failures += 1
            state.restarts += 1
            state.last_error = f"replica {replica.context.replica_id} {detail}"
            if isinstance(exc, TimeoutError) and hasattr(replica, "kill"):
                replica.kill()  # a hung worker cannot drain; its requests fail with 503
            await self._runtime.retire(state, slot, UNHEALTHY_DRAIN_S)
            self.wake()
        finally:
            slot.probing = False
            slot.last_probe = time.monotonic()

    def _reconcile(self, state: DeploymentState, now: float) -> None:
        if state.lock.locked() or self._runtime.state != "running":
            return
        if state.running == state.target:
            return
        if state.running < state.target and now < state.next_start_at:
            return
        self._spawn(self._runtime.reconcile(state))

    def _spawn(self, coro: object) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self._work.add(task)
        task.add_done_callback(self._work.discard)

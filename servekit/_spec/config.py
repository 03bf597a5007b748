"""The one definition of every deployment option, shared by the decorator, `.options()` and manifests."""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal, Self, TypedDict

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from servekit.errors import DeploymentOptionError

_MEMORY_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "m": 10**6,
    "mb": 10**6,
    "g": 10**9,
    "gb": 10**9,
    "ki": 2**10,
    "kib": 2**10,
    "mi": 2**20,
    "mib": 2**20,
    "gi": 2**30,
    "gib": 2**30,
}
_MEMORY_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def _parse_memory(value: object) -> object:
    """Accept bytes as an int or a string like "512MiB" / "2GB"; leave other values to pydantic."""
    if not isinstance(value, str):
        return value
    match = _MEMORY_PATTERN.match(value)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _MEMORY_UNITS:
        raise ValueError(f"memory must be bytes or a size like '512MiB' or '2GB', got {value!r}")
    return int(float(match.group(1)) * _MEMORY_UNITS[unit])


BUILTIN_POLICIES = ("ongoing_requests", "queue_depth", "latency")
Isolation = Literal["in_process", "process"]


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class Resources(_Options):
    """What one replica needs. GPUs may be fractional (0.5 packs two replicas on one device)."""

    cpus: float = Field(1.0, ge=0, description="CPU cores per replica.")
    gpus: float = Field(0.0, ge=0, description="GPUs per replica: a fraction below 1, or a whole number.")
    memory: Annotated[int | None, BeforeValidator(_parse_memory)] = Field(
        None, ge=0, description="Memory per replica in bytes (or a string like '2GiB')."
    )
    accelerator_type: str | None = Field(
        None,
        min_length=1,
        description=(
            "GPU model the replica must run on, like 'A100' or 'H100' (Ray's accelerator types); "
            "the local runtime plans GPUs by count and only logs it."
        ),
    )
    custom: dict[str, float] = Field(
        default_factory=dict,
        description=(
            "Custom resources per replica, like {'TPU': 1} or {'node_pool_a': 0.01} (Ray's custom "
            "resources); the local runtime has none to plan and only logs them."
        ),
    )

    @model_validator(mode="after")
    def _gpus_fraction_or_whole(self) -> Self:
        if self.gpus > 1 and not self.gpus.is_integer():
            raise ValueError(f"gpus must be a fraction below 1 (e.g. 0.5) or a whole number, got {self.gpus}")
        return self

    @model_validator(mode="after")
    def _custom_resources_named(self) -> Self:
        builtin = {"CPU", "GPU", "memory", "object_store_memory"}
        for name, amount in self.custom.items():
            if not name or name in builtin:
                raise ValueError(
                    f"custom resource {name!r} is not allowed: use cpus, gpus or memory for "
                    f"{', '.join(sorted(builtin))}; name your own, like {{'TPU': 1}}"
                )
            if amount < 0:
                raise ValueError(f"custom resource {name!r} must be >= 0, got {amount}")
        return self


class Autoscaling(_Options):
    """Replica count bounds and the signal that drives scaling (policies run in the runtime)."""

    min_replicas: int = Field(1, ge=0, description="Fewest replicas; 0 allows scale to zero.")
    max_replicas: int = Field(1, ge=1, description="Most replicas.")
    initial_replicas: int | None = Field(
        None, ge=0, description="Replicas at start; defaults to min_replicas."
    )
    target_ongoing_requests: float = Field(
        2.0, gt=0, description="Ongoing requests per replica the policy aims for."
    )
    upscale_delay_s: float = Field(
        30.0, ge=0, description="How long demand must stay high before adding replicas."
    )
    downscale_delay_s: float = Field(
        600.0, ge=0, description="How long demand must stay low before removing replicas."
    )
    downscale_to_zero_delay_s: float | None = Field(
        None, ge=0, description="Scaling to 0 also needs this long without any request."
    )
    smoothing_factor: float = Field(
        1.0, gt=0, description="Multiplies each scaling step (below 1 damps, above 1 amplifies)."
    )
    policy: str | Callable[..., Any] = Field(
        "ongoing_requests",
        description=(
            "What drives scaling: 'ongoing_requests' (Ray Serve's target per replica), 'queue_depth', "
            "'latency' (p95 against target_latency_ms), or your own policy as a callable or "
            "'module:function'."
        ),
    )
    target_queue_depth: float = Field(
        4.0,
        gt=0,
        description="Requests allowed to wait per replica (beyond those it runs) under 'queue_depth'.",
    )
    target_latency_ms: float | None = Field(
        None, gt=0, description="p95 latency the 'latency' policy keeps requests under."
    )
    metrics_interval_s: float = Field(
        1.0, gt=0, description="How often the controller samples metrics and decides."
    )
    look_back_period_s: float = Field(
        10.0, gt=0, description="Window over which metrics are averaged for a decision."
    )

    @model_validator(mode="after")
    def _bounds_ordered(self) -> Self:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas ({self.min_replicas}) must not exceed max_replicas ({self.max_replicas})"
            )
        if self.policy == "latency" and self.target_latency_ms is None:
            raise ValueError("policy 'latency' needs target_latency_ms (the p95 to stay under)")
        if isinstance(self.policy, str) and self.policy not in BUILTIN_POLICIES and ":" not in self.policy:
            raise ValueError(
                f"policy {self.policy!r} is unknown; use one of {', '.join(BUILTIN_POLICIES)}, "
                "a callable, or 'module:function'"
            )
        initial = self.initial_replicas
        if initial is not None and not self.min_replicas <= initial <= self.max_replicas:
            raise ValueError(
                f"initial_replicas ({initial}) must lie between min_replicas "
                f"({self.min_replicas}) and max_replicas ({self.max_replicas})"
            )
        return self

    @property
    def start_replicas(self) -> int:
        """How many replicas the deployment starts with."""
        return self.min_replicas if self.initial_replicas is None else self.initial_replicas


class BatchOptions(_Options):
    """Overrides of one `@batch` method's options for a deployment; unset fields keep the decorator's.

    Set per method with `batching={"predict": BatchOptions(max_batch_size=64)}`. A redeploy that
    changes only `batching` updates running replicas in place, without restarting them.
    """

    max_batch_size: int | None = Field(None, ge=1, description="Most items in one batch.")
    max_wait_ms: float | None = Field(
        None,
        ge=0,
        description=(
            "Longest the oldest waiting item is held for a batch to fill while the model is free "
            "(the batcher holds only while waiting pays; 0 never holds)."
        ),
    )
    max_concurrent_batches: int | None = Field(
        None, ge=1, description="Batches of this method that may run at once on one replica."
    )
    wait: Literal["adaptive", "fill"] | None = Field(
        None,
        description=(
            "How a batch holds for more items: 'adaptive' (only while waiting pays) or 'fill' "
            "(under load, for the whole max_wait_ms, as Ray Serve's @serve.batch does)."
        ),
    )

    def overrides(self) -> dict[str, Any]:
        """The fields set to a value (what this overrides)."""
        return {name: value for name, value in self.model_dump().items() if value is not None}


class DeploymentConfig(_Options):
    """Every option of a deployment. `model_fields_set` tells what the user set explicitly."""

    name: str | None = Field(
        None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_.\-]*$",
        description="Deployment name; defaults to the class or function name.",
    )
    num_replicas: int = Field(1, ge=1, description="Fixed replica count (without autoscaling).")
    resources: Resources = Field(default_factory=Resources, description="Per-replica resources.")
    max_ongoing_requests: int = Field(
        100, ge=1, description="Requests one replica runs at once; more wait in the queue."
    )
    max_queued_requests: int = Field(
        1000, ge=0, description="Requests waiting for a replica; beyond this callers get 503."
    )
    request_timeout_s: float | None = Field(
        None,
        gt=0,
        description=(
            "Seconds a caller waits: for a unary call's result, for a stream's first chunk and "
            "for each next one; past it the call is cancelled (HTTP 504)."
        ),
    )
    version: str | None = Field(None, description="Version label of the code and weights.")
    isolation: Isolation = Field(
        "in_process",
        description=(
            "Where replicas run: 'in_process' (on the server's event loop and threads) or "
            "'process' (one worker process per replica, with its own devices)."
        ),
    )
    autoscaling: Autoscaling | None = Field(
        None, description="Autoscaling bounds and target; excludes num_replicas."
    )
    health_check_period_s: float = Field(
        10.0, gt=0, description="Seconds between health checks of a replica."
    )
    health_check_timeout_s: float = Field(
        30.0, gt=0, description="A health check slower than this marks the replica unhealthy."
    )
    graceful_shutdown_timeout_s: float = Field(
        20.0, ge=0, description="How long a stopping replica may drain in-flight requests."
    )
    batching: dict[str, BatchOptions] = Field(
        default_factory=dict,
        description=(
            "Per `@batch` method name, overrides of its batch options (max_batch_size, max_wait_ms, "
            "max_concurrent_batches); changing only this on a redeploy updates replicas in place."
        ),
    )

    @model_validator(mode="after")
    def _replicas_or_autoscaling(self) -> Self:
        if self.autoscaling is not None and "num_replicas" in self.model_fields_set:
            raise ValueError(
                "set either num_replicas or autoscaling, not both "
                "(autoscaling=Autoscaling(min_replicas=..., max_replicas=...))"
            )
        return self

    @model_validator(mode="after")
    def _batching_names_methods(self) -> Self:
        for method in self.batching:
            if not method.isidentifier():
                raise ValueError(
                    f"batching keys are method names, like {{'predict': BatchOptions(max_batch_size=64)}}; "
                    f"got {method!r}"
                )
        return self

    @property
    def start_replicas(self) -> int:
        """How many replicas the deployment starts with."""
        return self.num_replicas if self.autoscaling is None else self.autoscaling.start_replicas

    def updated(self, owner: str, **options: Any) -> DeploymentConfig:
        """A copy with `options` applied on top of what was set before, validated."""
        current = self.model_dump(exclude_unset=True)
        if "num_replicas" in options and "autoscaling" not in options:
            current.pop("autoscaling", None)
        if "autoscaling" in options and "num_replicas" not in options:
            current.pop("num_replicas", None)
        return parse_config(owner, {**current, **options})


class DeploymentOptions(TypedDict, total=False):
    """The keywords of `@deployment(...)` and `.options(...)`, typed for editors and type checkers.

    The same names and types as `DeploymentConfig`'s fields (a test keeps them equal); see there
    for what each means. Nested options also take plain dicts.
    """

    name: str | None
    num_replicas: int
    resources: Resources | dict[str, Any]
    max_ongoing_requests: int
    max_queued_requests: int
    request_timeout_s: float | None
    version: str | None
    isolation: Isolation
    autoscaling: Autoscaling | dict[str, Any] | None
    health_check_period_s: float
    health_check_timeout_s: float
    graceful_shutdown_timeout_s: float
    batching: dict[str, BatchOptions] | dict[str, dict[str, Any]]


def parse_config(owner: str, options: Mapping[str, Any]) -> DeploymentConfig:
    """Validate `options` for deployment `owner`, raising `DeploymentOptionError` on the first problem."""
    try:
        return DeploymentConfig.model_validate(options)
    except ValidationError as exc:
        raise DeploymentOptionError(_describe(owner, exc)) from None


def _describe(owner: str, exc: ValidationError) -> str:
    lines = []
    for error in exc.errors(include_url=False):
        option = ".".join(str(part) for part in error["loc"])
        if error["type"] == "extra_forbidden":
            lines.append(_unknown_option(option))
        elif option:
            message = error["msg"].removeprefix("Value error, ")
            lines.append(f"option {option}={error['input']!r} is invalid: {message}")
        else:
            lines.append(error["msg"].removeprefix("Value error, "))
    return f"deployment {owner!r}: " + "; ".join(lines)


def _unknown_option(option: str) -> str:
    *parents, leaf = option.split(".")
    model: type[BaseModel] = DeploymentConfig
    if parents:
        nested: dict[str, type[BaseModel]] = {
            "resources": Resources,
            "autoscaling": Autoscaling,
            "batching": BatchOptions,
        }
        model = nested[parents[0]]
    valid = sorted(model.model_fields)
    close = difflib.get_close_matches(leaf, valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown option {option!r}{hint}; valid options are: {', '.join(valid)}"

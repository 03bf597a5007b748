"""`Canary`: the options of an automated progressive rollout between two arms of a router.

Pure data: which arm is the baseline and which the candidate, the traffic steps, how long each
step bakes, and the thresholds each check holds the candidate to. The controller that applies
them lives in `servekit._replica.routing.canary` (the decision rules are written out there).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from servekit.errors import GraphError

OutputKindOption = Literal["auto", "categorical", "numeric"]
DivergenceName = Literal["js", "kl"]


class Canary(BaseModel):
    """A progressive rollout from `baseline` to `candidate` with automated analysis and rollback.

    At each step the candidate gets `steps[i]` percent of the traffic. After `bake_s`, with at
    least `min_samples` calls on both arms, it moves to the next step when the candidate's
    error rate, p95 latency and output distribution all stay within their thresholds; it goes
    back to 100% baseline at once when one of them is conclusively worse. Reaching 100 ends it.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    baseline: str = Field(min_length=1, description="The arm serving today (the one rolled back to).")
    candidate: str = Field(min_length=1, description="The arm being rolled out.")
    steps: tuple[float, ...] = Field(
        (1.0, 5.0, 25.0, 50.0, 100.0),
        description=(
            "Percent of traffic the candidate gets at each step: increasing, above 0, ending at 100 "
            "(reaching 100 completes the rollout)."
        ),
    )
    bake_s: float = Field(
        300.0, ge=0, description="Seconds each step runs before it may be promoted to the next."
    )
    min_samples: int = Field(
        200,
        ge=1,
        description=(
            "Calls (and declared outputs) each arm must have answered in the step's window before "
            "a check can pass, or the latency and output checks fail."
        ),
    )
    max_error_rate_increase: float = Field(
        0.01,
        ge=0,
        le=1,
        description="Largest tolerated candidate error rate minus baseline error rate (0.01 = 1 point).",
    )
    max_p95_ratio: float = Field(
        1.5, ge=1, description="Largest tolerated candidate p95 latency over baseline p95 latency."
    )
    max_divergence: float = Field(
        0.1,
        gt=0,
        description=(
            "Largest tolerated distance between the arms' outputs: Jensen-Shannon (bits, 0..1) or KL "
            "(bits) for categories, PSI over the baseline's deciles for numbers."
        ),
    )
    output: Callable[[Any], Any] | None = Field(
        None,
        description=(
            "Extracts the declared output from a call's result, like `lambda r: r['label']`; "
            "without it the output check is skipped."
        ),
    )
    output_kind: OutputKindOption = Field(
        "auto",
        description=(
            "How outputs compare: 'categorical' (labels), 'numeric' (scores), or 'auto' (floats are "
            "numeric, anything else a label)."
        ),
    )
    divergence: DivergenceName = Field(
        "js", description="Distance for categorical outputs: 'js' (Jensen-Shannon) or 'kl'."
    )
    confidence: float = Field(
        0.95,
        gt=0.5,
        lt=1,
        description=(
            "Evidence a rollback on errors needs: the always-valid error-rate test rejects at 1 - confidence."
        ),
    )

    @field_validator("steps", mode="before")
    @classmethod
    def _steps_sequence(cls, value: object) -> object:
        if isinstance(value, (list, tuple)) and not value:
            raise ValueError("steps must not be empty; give percents like [1, 5, 25, 50, 100]")
        return value

    @field_validator("steps")
    @classmethod
    def _steps_increase_to_100(cls, steps: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0 < step <= 100 for step in steps):
            raise ValueError(f"steps are percents above 0 and at most 100, got {list(steps)}")
        if any(later <= earlier for earlier, later in itertools.pairwise(steps)):
            raise ValueError(f"steps must increase, like [1, 5, 25, 50, 100]; got {list(steps)}")
        if steps[-1] != 100:
            raise ValueError(f"steps must end at 100 (the candidate takes all traffic); got {list(steps)}")
        if len(steps) < 2:
            raise ValueError("steps need at least one analysed step below 100, like [10, 100]")
        return steps

    @model_validator(mode="after")
    def _two_arms(self) -> Self:
        if self.baseline == self.candidate:
            raise ValueError(f"baseline and candidate must be different arms; both are {self.baseline!r}")
        return self

    def validate_arms(self, arm_names: Iterable[str]) -> None:
        """Raise `GraphError` naming the canary's baseline or candidate when it is not among `arm_names`."""
        arms = list(arm_names)
        for role, arm in (("baseline", self.baseline), ("candidate", self.candidate)):
            if arm not in arms:
                known = ", ".join(repr(name) for name in arms) or "none"
                raise GraphError(f"canary {role} {arm!r} is not an arm of this router; its arms are {known}")

    def extract_output(self, result: object) -> object | None:
        """The declared output of a call's `result`; None without `output` or when it raises."""
        if self.output is None:
            return None
        try:
            extracted: object = self.output(result)
        except Exception:  # a result without the declared field counts as no output
            return None
        return extracted

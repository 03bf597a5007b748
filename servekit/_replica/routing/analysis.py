"""Rollout statistics: numbers about two arms' calls in, figures and verdicts out.

Pure functions (and one small accumulator, `ShadowComparison`) over what routers saw; nothing
here reads a clock, does I/O or draws random numbers. The canary controller and the A/B report
are built from these:

- distributions of a declared output: `js_divergence` and `kl_divergence` of category counts
  (in bits, with additive smoothing), `psi` of numbers over the baseline's quantile bins;
- latency: `percentile` (nearest rank), so `percentile(latencies, 95)` is the p95;
- errors: `error_rate_evidence`, an always-valid one-sided test that the candidate's error rate
  exceeds the baseline's by more than a tolerance (see its docstring for the method and why);
- distributions' building blocks: `normal_cdf`, `normal_ppf`, `student_t_cdf`, `student_t_ppf`
  (scipy is not a dependency);
- shadows: `ShadowComparison` pairs primary and shadow answers to the same request and reports
  the agreement rate (labels) or mean absolute difference (numbers) and both latencies.
"""

from __future__ import annotations

import bisect
import math
import numbers
import statistics
from collections import Counter, OrderedDict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from servekit._replica.routing.samples import ArmSample

OutputKind = Literal["categorical", "numeric"]

DEFAULT_SMOOTHING = 0.5
"""Pseudo-count added to every category of both arms (Jeffreys' prior) before a divergence."""
PSI_BINS = 10
"""Quantile bins of the baseline's values that PSI compares (deciles)."""
PSI_FLOOR = 1e-4
"""Smallest share a PSI bin counts with, so an empty bin does not make PSI infinite."""
ERROR_MIXTURE_SD = 0.05
"""Spread of the normal mixture in the error-rate test: most power for differences of a few points."""


# --- distributions ---------------------------------------------------------------------------


def normal_cdf(x: float) -> float:
    """P(Z <= x) for a standard normal Z."""
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


_ACKLAM_A = (-39.69683028665376, 220.9460984245205, -275.9285104469687, 138.3577518672690,
             -30.66479806614716, 2.506628277459239)  # fmt: skip
_ACKLAM_B = (-54.47609879822406, 161.5858368580409, -155.6989798598866, 66.80131188771972,
             -13.28068155288572)  # fmt: skip
_ACKLAM_C = (-0.007784894002430293, -0.3223964580411365, -2.400758277161838, -2.549732539343734,
             4.374664141464968, 2.938163982698783)  # fmt: skip
_ACKLAM_D = (0.007784695709041462, 0.3224671290700398, 2.445134137142996, 3.754408661907416)
_ACKLAM_LOW = 0.02425


def normal_ppf(p: float) -> float:
    """The x with `normal_cdf(x) == p`, for 0 < p < 1 (Acklam's approximation, refined once)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"normal_ppf needs 0 < p < 1, got {p}")
    if p < _ACKLAM_LOW:
        x = _acklam_tail(p)
    elif p > 1.0 - _ACKLAM_LOW:
        x = -_acklam_tail(1.0 - p)
    else:
        q = p - 0.5
        r = q * q
        a, b = _ACKLAM_A, _ACKLAM_B
        numerator = (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q
        x = numerator / (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1.0)
    # one Halley step brings the approximation (1e-9 relative) to machine precision
    error = normal_cdf(x) - p
    u = error * math.sqrt(2.0 * math.pi) * math.exp(x * x / 2.0)
    return x - u / (1.0 + x * u / 2.0)


def _acklam_tail(p: float) -> float:
    c, d = _ACKLAM_C, _ACKLAM_D
    q = math.sqrt(-2.0 * math.log(p))
    numerator = ((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]
    return numerator / ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1.0)


def student_t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` (> 0, not necessarily whole) degrees of freedom."""
    if df <= 0:
        raise ValueError(f"student_t_cdf needs df > 0, got {df}")
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    tail = 0.5 * _regularized_beta(df / (df + t * t), df / 2.0, 0.5)
    return 1.0 - tail if t > 0 else tail


def student_t_ppf(p: float, df: float) -> float:
    """The t with `student_t_cdf(t, df) == p`, for 0 < p < 1 (bisection to 1e-12)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"student_t_ppf needs 0 < p < 1, got {p}")
    low, high = -1.0, 1.0
    while student_t_cdf(low, df) > p:
        low *= 2.0
    while student_t_cdf(high, df) < p:
        high *= 2.0
    while high - low > 1e-12 * max(1.0, abs(high)):
        middle = (low + high) / 2.0
        if student_t_cdf(middle, df) < p:
            low = middle
        else:
            high = middle
    return (low + high) / 2.0


def _regularized_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b), the regularized incomplete beta function (continued fraction, Lentz's method)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_fraction(x, a, b) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(1.0 - x, b, a) / b


def _beta_fraction(x: float, a: float, b: float) -> float:
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 500):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1.0) < eps:
            break
    return result


# --- output distributions --------------------------------------------------------------------


def output_key(value: object) -> Hashable:
    """A category for `value`: itself when hashable, else its repr (lists, dicts)."""
    return value if isinstance(value, Hashable) else repr(value)


def is_number(value: object) -> bool:
    """True for real numbers that are not booleans (`True` is a label, not 1.0)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def output_kind(values: Iterable[object]) -> OutputKind:
    """'numeric' when every value is a non-integral-typed real number (a float), else 'categorical'.

    Integers and booleans count as labels (class ids); declare `kind="numeric"` for integer scores.
    """
    seen = False
    for value in values:
        seen = True
        if not is_number(value) or isinstance(value, numbers.Integral):
            return "categorical"
    return "numeric" if seen else "categorical"


def _shares(
    baseline: Mapping[Hashable, float], candidate: Mapping[Hashable, float], smoothing: float
) -> tuple[list[float], list[float]]:
    if smoothing < 0:
        raise ValueError(f"smoothing must be >= 0, got {smoothing}")
    categories = sorted(set(baseline) | set(candidate), key=repr)
    p = [float(baseline.get(c, 0.0)) + smoothing for c in categories]
    q = [float(candidate.get(c, 0.0)) + smoothing for c in categories]
    p_total, q_total = sum(p), sum(q)
    if p_total <= 0 or q_total <= 0:
        raise ValueError("a divergence needs at least one count on each side")
    return [x / p_total for x in p], [x / q_total for x in q]


def _kl_bits(p: Sequence[float], q: Sequence[float]) -> float:
    total = 0.0
    for p_i, q_i in zip(p, q, strict=True):
        if p_i > 0:
            if q_i == 0:
                return math.inf
            total += p_i * math.log2(p_i / q_i)
    return total


def kl_divergence(
    candidate: Mapping[Hashable, float],
    baseline: Mapping[Hashable, float],
    smoothing: float = DEFAULT_SMOOTHING,
) -> float:
    """KL(candidate || baseline) in bits, of category counts after adding `smoothing` to each.

    How surprising the candidate's outputs are to the baseline's distribution; 0 when equal,
    unbounded and asymmetric (infinite for a category the baseline never gives, unless smoothed).
    """
    p_baseline, q_candidate = _shares(baseline, candidate, smoothing)
    return _kl_bits(q_candidate, p_baseline)


def js_divergence(
    baseline: Mapping[Hashable, float],
    candidate: Mapping[Hashable, float],
    smoothing: float = DEFAULT_SMOOTHING,
) -> float:
    """Jensen-Shannon divergence in bits of category counts after adding `smoothing` to each.

    Symmetric and bounded: 0 for equal distributions, 1 for ones with no category in common.
    """
    p, q = _shares(baseline, candidate, smoothing)
    middle = [(p_i + q_i) / 2.0 for p_i, q_i in zip(p, q, strict=True)]
    value = 0.5 * _kl_bits(p, middle) + 0.5 * _kl_bits(q, middle)
    return min(max(value, 0.0), 1.0)


def psi(
    baseline: Sequence[float], candidate: Sequence[float], bins: int = PSI_BINS, floor: float = PSI_FLOOR
) -> float:
    """Population stability index of `candidate` against `baseline`, over the baseline's quantile bins.

    The bins' edges are the baseline's `bins`-quantiles (repeated edges merged, so heavy ties
    give fewer bins); a value equal to an edge falls in the lower bin. PSI = sum over bins of
    (c - b) * ln(c / b) with each share at least `floor`. Rules of thumb: below 0.1 stable,
    0.1 to 0.25 a moderate shift, above 0.25 a large one.
    """
    if not baseline or not candidate:
        raise ValueError("psi needs at least one value on each side")
    if bins < 1:
        raise ValueError(f"psi needs bins >= 1, got {bins}")
    ordered = sorted(float(x) for x in baseline)
    edges = sorted({_quantile(ordered, k / bins) for k in range(1, bins)})
    b = [max(share, floor) for share in _bin_shares(edges, baseline)]
    c = [max(share, floor) for share in _bin_shares(edges, candidate)]
    return sum((c_i - b_i) * math.log(c_i / b_i) for b_i, c_i in zip(b, c, strict=True))


def _quantile(ordered: Sequence[float], q: float) -> float:
    """The `q`-quantile of sorted values, interpolating linearly between the closest ranks."""
    position = (len(ordered) - 1) * q
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (position - low) * (ordered[high] - ordered[low])


def _bin_shares(edges: Sequence[float], values: Sequence[float]) -> list[float]:
    """The share of `values` in each bin the sorted `edges` cut (a value on an edge: the lower bin)."""
    counts = [0] * (len(edges) + 1)
    for value in values:
        counts[bisect.bisect_left(edges, float(value))] += 1
    return [count / len(values) for count in counts]


# --- latency and errors ----------------------------------------------------------------------


def percentile(values: Iterable[float], percent: float) -> float | None:
    """The `percent`th percentile by nearest rank (an observed value); None without values."""
    ordered = sorted(values)
    if not ordered:
        return None
    rank = math.ceil(percent / 100.0 * len(ordered))
    return ordered[min(max(rank, 1), len(ordered)) - 1]


@dataclass(frozen=True)
class ErrorRateEvidence:
    """The error-rate comparison of a candidate against a baseline; see `error_rate_evidence`."""

    baseline_rate: float
    candidate_rate: float
    difference: float
    """Observed candidate minus baseline error rate."""
    tolerance: float
    likelihood_ratio: float
    """The mixture likelihood ratio against 'difference <= tolerance'; 1 when the data favour it."""
    p_value: float
    """Always-valid p-value: min(1, 1 / likelihood_ratio); may be checked after every call."""
    harmful: bool
    """True when the evidence shows, at the chosen confidence, that the increase exceeds `tolerance`."""


def error_rate_evidence(
    baseline_errors: int,
    baseline_calls: int,
    candidate_errors: int,
    candidate_calls: int,
    *,
    tolerance: float,
    confidence: float = 0.95,
    mixture_sd: float = ERROR_MIXTURE_SD,
) -> ErrorRateEvidence:
    """Test 'the candidate's error rate exceeds the baseline's by more than `tolerance`', sequentially.

    Method: a mixture sequential probability ratio test (mSPRT; Johari, Pekelis and Walsh,
    "Always Valid Inference", 2017 — the always-valid p-values of online A/B testing) on the
    difference of the two error rates. The difference d is estimated with the Agresti-Caffo
    adjustment (one error and one success added to each arm, so 0 of n still has a variance);
    its variance V = pc(1-pc)/(nc+2) + pb(1-pb)/(nb+2). Against H0 'difference = tolerance'
    the normal-mixture likelihood ratio, with the mixture's spread tau, is

        L = sqrt(V / (V + tau^2)) * exp(tau^2 (d - tolerance)^2 / (2 V (V + tau^2)))

    and the candidate is found harmful when d > tolerance and L >= 1 / (1 - confidence).

    Why this test: the canary looks at the data after every call, as often as it likes, and
    acts the moment the evidence is there. A fixed-sample test (a z-test at each look) would
    cross its threshold by chance far more often than 1 - confidence under such peeking; the
    mixture ratio is a martingale under H0, so the chance it ever crosses 1/alpha stays below
    alpha however often it is checked (up to the normal approximation of the rates). It needs
    no planned sample size, and a large increase (5% errors against 0%) is conclusive after a
    few hundred calls, well before a bake period ends.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    rate_b = baseline_errors / baseline_calls if baseline_calls else 0.0
    rate_c = candidate_errors / candidate_calls if candidate_calls else 0.0
    adjusted_b = (baseline_errors + 1) / (baseline_calls + 2)
    adjusted_c = (candidate_errors + 1) / (candidate_calls + 2)
    variance = adjusted_c * (1 - adjusted_c) / (candidate_calls + 2) + adjusted_b * (1 - adjusted_b) / (
        baseline_calls + 2
    )
    excess = (adjusted_c - adjusted_b) - tolerance
    ratio = 1.0
    if excess > 0 and baseline_calls and candidate_calls:
        spread = mixture_sd * mixture_sd
        log_ratio = 0.5 * math.log(variance / (variance + spread)) + spread * excess * excess / (
            2.0 * variance * (variance + spread)
        )
        ratio = math.exp(min(log_ratio, 700.0))
    p_value = min(1.0, 1.0 / ratio)
    harmful = excess > 0 and ratio >= 1.0 / (1.0 - confidence)
    return ErrorRateEvidence(rate_b, rate_c, rate_c - rate_b, tolerance, ratio, p_value, harmful)


def wilson_interval(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion; (0, 1) without trials."""
    if trials <= 0:
        return 0.0, 1.0
    z = normal_ppf(0.5 + confidence / 2.0)
    share = successes / trials
    denominator = 1.0 + z * z / trials
    centre = (share + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(share * (1 - share) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


# --- shadows ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShadowReport:
    """Primary against shadow over the requests both answered."""

    pairs: int
    """Requests answered by both the primary and the shadow arm."""
    shadow_errors: int
    """Shadow calls that failed (their primary counterpart may have succeeded)."""
    kind: OutputKind | None
    """How outputs were compared; None before any pair had outputs on both sides."""
    agreement_rate: float | None
    """Share of pairs with equal labels (categorical outputs)."""
    agreement_interval: tuple[float, float] | None
    """95% Wilson interval of `agreement_rate`: the evidence for promoting the shadow."""
    mean_absolute_difference: float | None
    """Mean |primary - shadow| over pairs (numeric outputs)."""
    primary_p50_s: float | None
    primary_p95_s: float | None
    shadow_p50_s: float | None
    shadow_p95_s: float | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view."""
        interval = list(self.agreement_interval) if self.agreement_interval else None
        return {
            "pairs": self.pairs,
            "shadow_errors": self.shadow_errors,
            "kind": self.kind,
            "agreement_rate": self.agreement_rate,
            "agreement_interval_95": interval,
            "mean_absolute_difference": self.mean_absolute_difference,
            "latency_s": {
                "primary": {"p50": self.primary_p50_s, "p95": self.primary_p95_s},
                "shadow": {"p50": self.shadow_p50_s, "p95": self.shadow_p95_s},
            },
        }


class ShadowComparison:
    """Pairs the primary's and a shadow arm's answers to one request (by request id) and compares them.

    Feed every `ArmSample` of the primary arms and of one shadow arm to `observe`; samples
    without a request id cannot be paired and count only towards latency. At most
    `max_pending` unpaired answers wait for their counterpart (the oldest are forgotten), and
    the latest `max_pairs` pairs are compared.
    """

    def __init__(self, shadow_arm: str, *, max_pending: int = 10_000, max_pairs: int = 10_000) -> None:
        self._arm = shadow_arm
        self._max_pending = max_pending
        self._max_pairs = max_pairs
        self._pending: OrderedDict[tuple[bool, str], ArmSample] = OrderedDict()
        self._pairs: list[tuple[ArmSample, ArmSample]] = []
        self._shadow_errors = 0

    def observe(self, sample: ArmSample) -> None:
        """Record one finished call of a primary arm or of this comparison's shadow arm."""
        is_shadow = sample.shadow and sample.arm == self._arm
        if sample.shadow and not is_shadow:
            return
        if is_shadow and not sample.ok:
            self._shadow_errors += 1
        if sample.request_id is None:
            return
        partner = self._pending.pop((not is_shadow, sample.request_id), None)
        if partner is None:
            self._pending[(is_shadow, sample.request_id)] = sample
            while len(self._pending) > self._max_pending:
                self._pending.popitem(last=False)
            return
        primary, shadow = (partner, sample) if is_shadow else (sample, partner)
        self._pairs.append((primary, shadow))
        if len(self._pairs) > 2 * self._max_pairs:
            del self._pairs[: len(self._pairs) - self._max_pairs]

    def report(self) -> ShadowReport:
        """The comparison over the latest pairs."""
        pairs = self._pairs[-self._max_pairs :]
        answered = [(p, s) for p, s in pairs if _answered(p) and _answered(s)]
        outputs = [value for pair in answered for value in (pair[0].output, pair[1].output)]
        kind = output_kind(outputs) if answered else None
        agreement = interval = mad = None
        if kind == "categorical":
            agreeing = sum(output_key(p.output) == output_key(s.output) for p, s in answered)
            agreement = agreeing / len(answered)
            interval = wilson_interval(agreeing, len(answered))
        elif kind == "numeric":
            mad = statistics.fmean(abs(float(p.output) - float(s.output)) for p, s in answered)  # type: ignore[arg-type]
        primary = [p.latency_s for p, _ in pairs]
        shadow = [s.latency_s for _, s in pairs]
        return ShadowReport(
            pairs=len(pairs),
            shadow_errors=self._shadow_errors,
            kind=kind,
            agreement_rate=agreement,
            agreement_interval=interval,
            mean_absolute_difference=mad,
            primary_p50_s=percentile(primary, 50),
            primary_p95_s=percentile(primary, 95),
            shadow_p50_s=percentile(shadow, 50),
            shadow_p95_s=percentile(shadow, 95),
        )


def _answered(sample: ArmSample) -> bool:
    return sample.ok and sample.output is not None


def category_counts(values: Iterable[object]) -> Counter[Hashable]:
    """How often each category occurs among `values` (unhashable values by repr)."""
    return Counter(output_key(value) for value in values)

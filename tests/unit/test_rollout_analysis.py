"""Rollout statistics as pure functions: distributions against known values, divergences and PSI
against hand-computed ones, the sequential error-rate test's safety under peeking, shadows."""

from __future__ import annotations

import math
import random

import pytest

from servekit._replica.routing.analysis import (
    ShadowComparison,
    error_rate_evidence,
    js_divergence,
    kl_divergence,
    normal_cdf,
    normal_ppf,
    output_kind,
    percentile,
    psi,
    student_t_cdf,
    student_t_ppf,
    wilson_interval,
)
from servekit._replica.routing.samples import ArmSample

# --- distributions (reference values from standard tables) ------------------------------------


@pytest.mark.parametrize(
    ("x", "expected"),
    [(0.0, 0.5), (1.0, 0.8413447461), (-1.0, 0.1586552539), (1.959963985, 0.975), (-3.0, 0.0013498980)],
)
def test_normal_cdf_matches_tables(x: float, expected: float) -> None:
    assert normal_cdf(x) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize(
    ("p", "expected"),
    [
        (0.5, 0.0),
        (0.975, 1.959963985),
        (0.95, 1.644853627),
        (0.8, 0.841621234),
        (0.001, -3.090232306),
        (1e-6, -4.753424309),
    ],
)
def test_normal_ppf_matches_tables(p: float, expected: float) -> None:
    assert normal_ppf(p) == pytest.approx(expected, abs=1e-8)


def test_normal_ppf_inverts_the_cdf_and_rejects_bad_probabilities() -> None:
    for p in (1e-10, 0.01, 0.3, 0.7, 0.99, 1 - 1e-10):
        assert normal_cdf(normal_ppf(p)) == pytest.approx(p, rel=1e-9)
    with pytest.raises(ValueError, match="0 < p < 1"):
        normal_ppf(1.0)


@pytest.mark.parametrize(
    ("t", "df", "expected"),
    [
        (0.0, 5, 0.5),
        (1.0, 1, 0.75),  # Cauchy
        (2.0, 10, 0.9633059826),
        (-2.0, 10, 0.0366940174),
        (2.228138852, 10, 0.975),
        (2.015048373, 5, 0.95),
        (12.70620474, 1, 0.975),
        (1.0, 3, 0.8044988905),  # closed form: 1/2 + (atan(1/sqrt 3) + (1/sqrt 3) / (4/3)) / pi
        (1.0, 2.5, 0.7979694864),  # fractional df (Welch's), by numerical integration of the density
        (1.959963985, 1e7, 0.975),  # tends to the normal
    ],
)
def test_student_t_cdf_matches_tables(t: float, df: float, expected: float) -> None:
    assert student_t_cdf(t, df) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
    ("p", "df", "expected"),
    [(0.975, 10, 2.228138852), (0.95, 5, 2.015048373), (0.975, 1, 12.70620474), (0.025, 30, -2.042272456)],
)
def test_student_t_ppf_matches_tables(p: float, df: float, expected: float) -> None:
    assert student_t_ppf(p, df) == pytest.approx(expected, abs=1e-7)


# --- divergences and PSI (hand-computed) --------------------------------------------------------


def test_js_divergence_of_hand_computed_counts() -> None:
    # M = (.5, .3, .2); KL(P||M) = .7 log2 1.4 + .2 log2(2/3) + .1 log2 .5 = 0.122800
    # KL(Q||M) = .3 log2 .6 + .4 log2(4/3) + .3 log2 1.5 = 0.120420; JS = mean = 0.121610
    baseline, candidate = {"a": 7, "b": 2, "c": 1}, {"a": 3, "b": 4, "c": 3}

    assert js_divergence(baseline, candidate, smoothing=0) == pytest.approx(0.121610, abs=1e-6)
    assert js_divergence(candidate, baseline, smoothing=0) == js_divergence(baseline, candidate, smoothing=0)


def test_js_divergence_is_bounded_by_one_bit_and_zero_for_equal_shares() -> None:
    assert js_divergence({"a": 5}, {"b": 9}, smoothing=0) == 1.0
    assert js_divergence({"a": 2, "b": 1}, {"a": 20, "b": 10}, smoothing=0) == pytest.approx(0.0, abs=1e-12)
    assert js_divergence({"a": 20, "b": 10}, {"a": 20, "b": 10}) == 0.0


def test_smoothing_adds_a_pseudo_count_to_every_category() -> None:
    # with 1 added: P = (2/3, 1/3), Q = (1/3, 2/3); JS = 2/3 log2(4/3) + 1/3 log2(2/3) = 0.081704
    assert js_divergence({"a": 1}, {"b": 1}, smoothing=1) == pytest.approx(0.081704, abs=1e-6)


def test_kl_divergence_of_hand_computed_counts() -> None:
    # KL(Q||P) with Q = (.5, .5), P = (.75, .25): .5 log2(2/3) + .5 log2 2 = 0.207519
    assert kl_divergence({"a": 1, "b": 1}, {"a": 3, "b": 1}, smoothing=0) == pytest.approx(0.207519, abs=1e-6)
    assert kl_divergence({"a": 3, "b": 1}, {"a": 1, "b": 1}, smoothing=0) == pytest.approx(0.188722, abs=1e-6)


def test_kl_divergence_is_infinite_for_a_new_category_unless_smoothed() -> None:
    assert kl_divergence({"a": 5, "new": 1}, {"a": 6}, smoothing=0) == math.inf
    assert math.isfinite(kl_divergence({"a": 5, "new": 1}, {"a": 6}))


def test_psi_over_the_baselines_quantile_bins() -> None:
    # baseline median 2.5 -> bins (-inf, 2.5], (2.5, inf); shares (.5, .5) vs (.75, .25):
    # PSI = .25 ln 1.5 + (-.25) ln .5 = 0.274653
    assert psi([1, 2, 3, 4], [1, 1, 1, 4], bins=2, floor=0) == pytest.approx(0.274653, abs=1e-6)
    assert psi([1, 2, 3, 4], [4, 3, 2, 1], bins=2) == 0.0


def test_psi_floors_empty_bins_and_merges_tied_edges() -> None:
    # all candidate values above every baseline value: finite thanks to the floor
    assert math.isfinite(psi(list(range(100)), [1000.0] * 50))
    # a constant baseline has one edge: two bins
    assert psi([5.0] * 10, [5.0] * 5 + [6.0] * 5, floor=0.0001) == pytest.approx(
        0.4999 * math.log(0.5 / 0.0001) + (0.5 - 1) * math.log(0.5), abs=1e-3
    )


def test_percentile_is_the_nearest_rank() -> None:
    values = list(range(100, 0, -1))

    assert percentile(values, 95) == 95
    assert percentile(values, 50) == 50
    assert percentile(values, 100) == 100
    assert percentile([0.3], 95) == 0.3
    assert percentile([], 95) is None


def test_output_kind_treats_floats_as_numbers_and_the_rest_as_labels() -> None:
    assert output_kind([0.1, 2.5]) == "numeric"
    assert output_kind([1, 2]) == "categorical"
    assert output_kind([True, False]) == "categorical"
    assert output_kind(["cat", 0.5]) == "categorical"


# --- the error-rate test ------------------------------------------------------------------------


def test_five_percent_errors_against_none_is_conclusive_after_a_few_hundred_calls() -> None:
    early = error_rate_evidence(0, 900, 5, 100, tolerance=0.01)
    later = error_rate_evidence(0, 2700, 15, 300, tolerance=0.01)

    assert not early.harmful
    assert later.harmful
    assert later.p_value < 0.05
    assert later.difference == pytest.approx(0.05)


def test_an_increase_within_the_tolerance_is_never_harmful() -> None:
    evidence = error_rate_evidence(100, 10_000, 150, 10_000, tolerance=0.01)

    assert (evidence.harmful, evidence.p_value, evidence.likelihood_ratio) == (False, 1.0, 1.0)


def test_peeking_after_every_ten_calls_keeps_false_alarms_below_alpha() -> None:
    """Equal error rates, tested 200 times per run: a fixed-sample test would alarm far more often."""
    rng = random.Random(7)
    alarms = 0
    runs = 200
    for _ in range(runs):
        errors_b = errors_c = 0
        for look in range(1, 201):
            errors_b += sum(rng.random() < 0.05 for _ in range(10))
            errors_c += sum(rng.random() < 0.05 for _ in range(10))
            if error_rate_evidence(errors_b, look * 10, errors_c, look * 10, tolerance=0.0).harmful:
                alarms += 1
                break
    assert alarms / runs <= 0.05


def test_wilson_interval_matches_a_known_value() -> None:
    low, high = wilson_interval(8, 10)

    assert (low, high) == (pytest.approx(0.490162, abs=1e-6), pytest.approx(0.943318, abs=1e-6))
    assert wilson_interval(0, 0) == (0.0, 1.0)


# --- shadows ------------------------------------------------------------------------------------


def _pair(request: str, primary: object, shadow: object, *, shadow_ok: bool = True) -> list[ArmSample]:
    return [
        ArmSample("v1", True, 0.010, 1.0, output=primary, request_id=request),
        ArmSample("v3", shadow_ok, 0.030, 1.1, output=shadow, request_id=request, shadow=True),
    ]


def test_shadow_labels_agreement_rate_with_its_interval() -> None:
    comparison = ShadowComparison("v3")
    for sample in [*_pair("r1", "cat", "cat"), *_pair("r2", "dog", "cat"), *_pair("r3", "cat", "cat")]:
        comparison.observe(sample)
    for sample in reversed(_pair("r4", "dog", "dog")):  # the shadow may finish first
        comparison.observe(sample)

    report = comparison.report()

    assert (report.pairs, report.kind, report.agreement_rate) == (4, "categorical", 0.75)
    assert report.agreement_interval == wilson_interval(3, 4)
    assert (report.primary_p95_s, report.shadow_p95_s) == (0.010, 0.030)
    assert report.to_dict()["latency_s"]["shadow"]["p50"] == 0.030


def test_shadow_numbers_mean_absolute_difference_and_errors() -> None:
    comparison = ShadowComparison("v3")
    samples = [*_pair("a", 1.0, 1.5), *_pair("b", 2.0, 1.0), *_pair("c", 2.0, None, shadow_ok=False)]
    samples += [ArmSample("v1", True, 0.01, 1.0, output=3.0)]  # no request id: cannot be paired
    samples += [ArmSample("v4", True, 0.01, 1.0, output=3.0, request_id="a", shadow=True)]  # another shadow
    for sample in samples:
        comparison.observe(sample)

    report = comparison.report()

    assert (report.pairs, report.kind, report.shadow_errors) == (3, "numeric", 1)
    assert report.mean_absolute_difference == pytest.approx(0.75)
    assert report.agreement_rate is None


def test_unpaired_answers_are_bounded() -> None:
    comparison = ShadowComparison("v3", max_pending=10)
    for index in range(100):
        comparison.observe(ArmSample("v1", True, 0.01, 1.0, output=1.0, request_id=str(index)))
    comparison.observe(ArmSample("v3", True, 0.01, 1.0, output=1.0, request_id="0", shadow=True))
    comparison.observe(ArmSample("v3", True, 0.01, 1.0, output=1.0, request_id="99", shadow=True))

    assert comparison.report().pairs == 1

"""A/B reports on seeded synthetic data: a known difference is significant, none is not."""

from __future__ import annotations

import json
import random

import pytest

from servekit._replica.routing.ab import ABTest, samples_per_arm
from servekit._replica.routing.samples import ArmSample


def fill(test: ABTest, means: dict[str, float], n: int, *, sd: float = 1.0, seed: int = 0) -> None:
    rng = random.Random(seed)
    for arm, mean in means.items():
        for _ in range(n):
            test.record(arm, "revenue", rng.gauss(mean, sd))


def test_a_known_difference_is_significant() -> None:
    test = ABTest(["a", "b"])
    fill(test, {"a": 10.0, "b": 10.5}, 400)

    [comparison] = test.report()["comparisons"]["revenue"]

    assert comparison["arms"] == ["a", "b"]
    assert comparison["difference"] == pytest.approx(0.5, abs=0.15)
    assert comparison["significant"] is True
    assert comparison["p_value"] < 0.001
    assert comparison["more_samples_per_arm"] == 0  # 400 per arm already detect a 0.5 sd difference


@pytest.mark.parametrize("seed", range(3))
def test_no_difference_is_not_significant_and_asks_for_more_samples(seed: int) -> None:
    test = ABTest(["a", "b"])
    fill(test, {"a": 10.0, "b": 10.0}, 200, seed=seed)

    [comparison] = test.report()["comparisons"]["revenue"]

    assert comparison["significant"] is False
    assert comparison["p_value"] > 0.05
    assert comparison["more_samples_per_arm"] > 200


def test_each_arm_reports_its_mean_and_confidence_interval() -> None:
    test = ABTest()
    for value in (1.0, 2.0, 3.0, 4.0):
        test.record("a", "clicks", value)

    outcome = test.report()["arms"]["a"]["outcomes"]["clicks"]

    # mean 2.5, sd sqrt(5/3) = 1.290994; t(0.975, 3) = 3.182446; half width 2.054260
    assert outcome["n"] == 4
    assert outcome["mean"] == 2.5
    assert outcome["std"] == pytest.approx(1.290994, abs=1e-6)
    assert outcome["ci95"] == [pytest.approx(0.445740, abs=1e-5), pytest.approx(4.554260, abs=1e-5)]


def test_without_spread_or_difference_the_figures_say_not_computable() -> None:
    test = ABTest()
    for arm in ("a", "b"):
        for _ in range(5):
            test.record(arm, "converted", True)

    [comparison] = test.report()["comparisons"]["converted"]

    assert comparison["p_value"] == "not computable"
    assert comparison["samples_per_arm"] == "not computable"
    assert comparison["more_samples_per_arm"] == "not computable"
    assert comparison["significant"] is False
    assert samples_per_arm(0.0, 1.0, 1.0) is None


def test_samples_per_arm_matches_the_textbook_formula() -> None:
    # (1.959964 + 0.841621)^2 * 2 / 0.5^2 = 62.79 -> 63
    assert samples_per_arm(0.5, 1.0, 1.0) == 63


def test_calls_errors_and_latency_percentiles_per_arm() -> None:
    test = ABTest(["a", "b"])
    for index in range(1, 101):
        test.observe(ArmSample("a", index % 10 != 0, index / 1000, float(index)))
    test.observe(ArmSample("b", True, 0.5, 1.0))
    test.observe(ArmSample("c", True, 0.5, 1.0, shadow=True))

    report = test.report()
    json.dumps(report, allow_nan=False)

    arm = report["arms"]["a"]
    assert (arm["calls"], arm["errors"], arm["error_rate"]) == (100, 10, 0.1)
    assert arm["latency_s"] == {"p50": 0.05, "p95": 0.095, "p99": 0.099}
    assert report["arms"]["b"]["calls"] == 1
    assert "c" not in report["arms"]


def test_a_non_finite_outcome_is_refused_with_its_name() -> None:
    with pytest.raises(ValueError, match="outcome 'revenue' must be a finite number"):
        ABTest().record("a", "revenue", float("nan"))
    with pytest.raises(ValueError, match="outcome 'clicks' must be a finite number, got 'many'"):
        ABTest().record("a", "clicks", "many")  # type: ignore[arg-type]

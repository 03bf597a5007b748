"""Deployment options: validation at decoration time, messages, `.options()` copies."""

from __future__ import annotations

import pytest

import servekit as sk
from servekit.errors import DeploymentOptionError


class Model:
    pass


def test_defaults_are_usable_under_concurrency() -> None:
    config = sk.deployment(Model).config
    assert config.num_replicas == 1
    assert config.max_ongoing_requests == 100
    assert config.max_queued_requests == 1000
    assert config.request_timeout_s is None


def test_bad_value_names_option_value_and_rule() -> None:
    with pytest.raises(DeploymentOptionError) as info:
        sk.deployment(num_replicas=0)(Model)
    message = str(info.value)
    assert "'Model'" in message
    assert "num_replicas=0" in message
    assert "greater than or equal to 1" in message


def test_unknown_option_suggests_the_closest_one() -> None:
    with pytest.raises(
        DeploymentOptionError, match=r"unknown option 'num_replica'.*did you mean 'num_replicas'"
    ):
        sk.deployment(num_replica=2)(Model)


def test_unknown_nested_resource_option_lists_valid_ones() -> None:
    with pytest.raises(
        DeploymentOptionError, match=r"resources.gpu'.*did you mean 'gpus'.*cpus, custom, gpus, memory"
    ):
        sk.deployment(resources={"gpu": 1})(Model)


def test_option_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="max_ongoing_requests"):
        sk.deployment(max_ongoing_requests=-5)(Model)


@pytest.mark.parametrize(("gpus", "ok"), [(0.5, True), (0.25, True), (1, True), (2, True), (1.5, False)])
def test_gpus_are_a_fraction_or_whole(gpus: float, ok: bool) -> None:
    if ok:
        assert sk.Resources(gpus=gpus).gpus == gpus
    else:
        with pytest.raises(ValueError, match="fraction below 1"):
            sk.Resources(gpus=gpus)


@pytest.mark.parametrize(("text", "expected"), [("512MiB", 512 * 2**20), ("2GB", 2 * 10**9), (1024, 1024)])
def test_memory_accepts_sizes_with_units(text: str | int, expected: int) -> None:
    assert sk.Resources(memory=text).memory == expected


def test_memory_rejects_unknown_units() -> None:
    with pytest.raises(ValueError, match="'12 parsecs'"):
        sk.Resources(memory="12 parsecs")


def test_autoscaling_bounds_must_be_ordered() -> None:
    with pytest.raises(ValueError, match=r"min_replicas \(3\) must not exceed max_replicas \(2\)"):
        sk.Autoscaling(min_replicas=3, max_replicas=2)
    with pytest.raises(ValueError, match="initial_replicas"):
        sk.Autoscaling(min_replicas=1, max_replicas=2, initial_replicas=5)


def test_num_replicas_and_autoscaling_exclude_each_other() -> None:
    with pytest.raises(DeploymentOptionError, match="either num_replicas or autoscaling"):
        sk.deployment(num_replicas=2, autoscaling=sk.Autoscaling(max_replicas=4))(Model)


def test_autoscaling_sets_the_starting_replicas() -> None:
    dep = sk.deployment(autoscaling=sk.Autoscaling(min_replicas=2, max_replicas=4))(Model)
    assert dep.config.start_replicas == 2


def test_options_returns_a_changed_copy() -> None:
    original = sk.deployment(num_replicas=2, version="v1")(Model)
    changed = original.options(version="v2", name="ModelV2")
    assert (original.config.version, original.name) == ("v1", "Model")
    assert (changed.config.version, changed.name, changed.config.num_replicas) == ("v2", "ModelV2", 2)


def test_options_switching_to_autoscaling_drops_num_replicas() -> None:
    original = sk.deployment(num_replicas=2)(Model)
    scaled = original.options(autoscaling=sk.Autoscaling(min_replicas=1, max_replicas=3))
    assert scaled.config.start_replicas == 1


def test_options_validate_immediately() -> None:
    with pytest.raises(DeploymentOptionError, match="request_timeout_s"):
        sk.deployment(Model).options(request_timeout_s=0)


def test_user_set_options_are_tracked() -> None:
    config = sk.deployment(max_ongoing_requests=8)(Model).config
    assert config.model_fields_set == {"max_ongoing_requests"}


def test_decorating_twice_is_an_error() -> None:
    dep = sk.deployment(Model)
    with pytest.raises(DeploymentOptionError, match="already a deployment"):
        sk.deployment(dep)


def test_calling_a_deployment_directly_explains_bind() -> None:
    dep = sk.deployment(Model)
    with pytest.raises(TypeError, match=r"Model.bind\(\.\.\.\)"):
        dep()


def test_endpoint_path_must_start_with_slash() -> None:
    with pytest.raises(DeploymentOptionError, match="like '/predict'"):
        sk.endpoint("predict")


def test_endpoint_methods_are_checked() -> None:
    with pytest.raises(DeploymentOptionError, match="FETCH"):
        sk.endpoint("/x", methods=["FETCH"])


def test_batch_options_are_checked() -> None:
    with pytest.raises(DeploymentOptionError, match="max_batch_size=0"):
        sk.batch(max_batch_size=0)

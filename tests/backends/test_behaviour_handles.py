"""What user code sees through handles, the same on every backend (`front` runs on each).

The app (`behaviour_apps.handle_app`): an ingress `Front` calling `Doubler` (2 replicas; sync,
async and generator methods) and `Batched` (`@sk.batch` methods), with one handle bound inside
a dict.
"""

from __future__ import annotations

import asyncio

import behaviour_apps as apps
import pytest

import servekit as sk
from servekit.errors import NotFoundError, UserCodeError

pytestmark = pytest.mark.integration


async def test_await_a_call_through_the_ingress(front: sk.AppHandle) -> None:
    assert await front.chain(5) == 11


async def test_a_call_submitted_as_an_async_job(front: sk.AppHandle) -> None:
    job = front.chain.submit(5)
    assert await job == 11
    status = job.status()
    assert (status["state"], status["attempts"], status["target"]) == ("succeeded", 1, "Front.chain")


def test_result_from_sync_code_and_from_a_sync_method(front: sk.AppHandle) -> None:
    assert front.chain(2).result(timeout=30) == 5
    assert front.sync_chain(4).result(timeout=30) == 9


async def test_a_response_passed_on_without_awaiting(front: sk.AppHandle) -> None:
    doubler = front.get_handle("Doubler")
    assert await doubler.add(doubler(3), b=doubler(4)) == 14


async def test_responses_nested_in_lists_tuples_and_dicts_arrive_as_their_results(
    front: sk.AppHandle,
) -> None:
    doubler = front.get_handle("Doubler")
    nested = [doubler(1), (doubler(2), 5), {"k": doubler(3), "deeper": [[doubler(4)]]}]
    assert await doubler.echo(nested) == [2, (4, 5), {"k": 6, "deeper": [[8]]}]
    assert await doubler.echo(value=[doubler(6), doubler(7)]) == [12, 14]
    assert [chunk async for chunk in doubler.count(doubler.add(1, 2))] == [0, 1, 2]


async def test_generator_methods_stream_through_handles(front: sk.AppHandle) -> None:
    relayed = [chunk async for chunk in front.relay(4)]
    assert relayed == [0, 10, 20, 30]
    doubler = front.get_handle("Doubler")
    assert [chunk async for chunk in doubler.count(3)] == [0, 1, 2]
    assert list(doubler.count_sync(2)) == ["s0", "s1"]


async def test_a_user_exception_keeps_its_type_and_names_its_deployment(front: sk.AppHandle) -> None:
    with pytest.raises(apps.SquareFailed) as caught:
        await front.deep_failure()
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, UserCodeError)
    assert "failed two hops down" in str(caught.value)
    assert "'Doubler'" in str(caught.value)


async def test_an_unknown_method_is_not_found(front: sk.AppHandle) -> None:
    with pytest.raises(NotFoundError, match="no_such_method"):
        await front.get_handle("Doubler").no_such_method()


async def test_batched_items_fail_alone(front: sk.AppHandle) -> None:
    results = await front.squares([1, -2, 3, 4])
    assert results[0] == 1
    assert results[1].startswith("error: SquareFailed: ")
    assert "cannot square -2" in results[1]
    assert results[2:] == [9, 16]


async def test_concurrent_callers_share_batches(front: sk.AppHandle) -> None:
    sizes = await front.batch_sizes(8)  # each caller gets the size of the batch it was in
    assert all(sizes.count(size) % size == 0 for size in set(sizes)), sizes
    batches = round(sum(1 / size for size in sizes))
    # the first caller may run alone at once (an idle model pays no window); the others arrive
    # while it runs, or within max_wait_ms, and share batches
    assert batches <= 2, f"eight concurrent callers formed {batches} batches: {sizes}"


async def test_concurrent_calls_from_many_tasks_all_answer(front: sk.AppHandle) -> None:
    results = await asyncio.gather(*(front.chain(i) for i in range(40)))
    assert results == [2 * i + 1 for i in range(40)]


async def test_requests_spread_over_the_replicas_with_their_own_context(front: sk.AppHandle) -> None:
    seen: set[str] = set()
    for _ in range(10):  # bounded; on Ray a caller learns of new replicas a moment after they run
        ids = await front.replica_ids(40)
        assert all(replica_id.startswith("Doubler#") for replica_id in ids)
        seen.update(ids)
        if len(seen) == 2:
            break
        await asyncio.sleep(0.5)
    assert len(seen) == 2, "two replicas of Doubler, both used by concurrent calls"


def test_status_lists_every_deployment_with_running_replicas(front: sk.AppHandle) -> None:
    status = front.status()
    assert status["ready"] is True
    deployments = status["deployments"]
    assert set(deployments) == {"Front", "Doubler", "Batched"}
    assert deployments["Doubler"]["running_replicas"] == 2
    assert len(deployments["Doubler"]["replicas"]) == 2
    assert all(replica["id"].startswith("Doubler#") for replica in deployments["Doubler"]["replicas"])

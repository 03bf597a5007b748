"""The wire format between server and workers: frames, out-of-band buffers, by-value classes."""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np
import pytest
import torch

from servekit._runtime.local.workers import codec
from servekit._runtime.local.workers.messages import Reply, Request, Undecodable


class _Feed:
    """Drives a FrameProtocol the way the event loop does, in chunks of a chosen size."""

    def __init__(self) -> None:
        self.received: list[Any] = []
        self.protocol = codec.FrameProtocol(self.received.append, lambda exc: None)

    def push(self, data: bytes, chunk: int) -> None:
        for offset in range(0, len(data), chunk):
            self.protocol.data_received(data[offset : offset + chunk])


def _wire(*messages: Any) -> bytes:
    return b"".join(bytes(part) for message in messages for part in codec.encode(message))


@pytest.mark.parametrize("chunk", [1, 7, 4096, 1 << 20])
def test_frames_survive_any_split_of_the_byte_stream(chunk: int) -> None:
    array = np.arange(10_000, dtype=np.float32)
    messages = [
        Request(1, "predict", ({"x": [0.5] * 16},), {}, False),
        Reply(1, True, array),
        Reply(2, True, b"x" * 200_000),
        Reply(3, False, ValueError("bad")),
    ]
    feed = _Feed()
    feed.push(_wire(*messages), chunk)
    assert len(feed.received) == 4
    assert feed.received[0] == messages[0]
    np.testing.assert_array_equal(feed.received[1].value, array)
    assert feed.received[2].value == b"x" * 200_000
    assert isinstance(feed.received[3].value, ValueError)


def test_numpy_arrays_travel_out_of_band_not_inside_the_pickle() -> None:
    array = np.ones((256, 256), dtype=np.float32)
    parts = codec.encode(Reply(1, True, array))
    header_and_table, body = parts[:2], parts[2]
    assert len(bytes(body)) < 1_000, "the array's bytes must not be copied into the pickle"
    assert any(memoryview(part).nbytes == array.nbytes for part in parts[3:])
    del header_and_table


def test_received_arrays_are_writable_and_exact() -> None:
    feed = _Feed()
    feed.push(_wire(Reply(1, True, np.arange(6, dtype=np.int64).reshape(2, 3))), 3)
    received = feed.received[0].value
    received[0, 0] = 42
    assert received.tolist() == [[42, 1, 2], [3, 4, 5]]


def test_cpu_tensors_cross_as_tensors() -> None:
    tensor = torch.randn(4, 8)
    feed = _Feed()
    feed.push(_wire(Reply(1, True, {"t": tensor, "half": tensor.half()})), 1024)
    value = feed.received[0].value
    assert isinstance(value["t"], torch.Tensor)
    assert torch.equal(value["t"], tensor)
    assert value["half"].dtype == torch.float16


def test_classes_defined_where_the_other_process_cannot_import_them_travel_by_value() -> None:
    class Local:  # "<locals>" in its qualname: not importable by name
        def __init__(self, n: int) -> None:
            self.n = n

    data = _wire(Reply(1, True, Local(3)))
    # The stream must not name the class for import: loading it with plain pickle works
    # even once the class is unreachable.
    feed = _Feed()
    feed.push(data, 64)
    value = feed.received[0].value
    assert value.n == 3
    assert type(value).__name__ == "Local"


def test_by_value_classes_are_reused_so_instances_share_one_class() -> None:
    class Point:
        def __init__(self, x: int) -> None:
            self.x = x

    feed = _Feed()
    feed.push(_wire(Reply(1, True, Point(1)), Reply(2, True, Point(2))), 512)
    first, second = (message.value for message in feed.received)
    assert type(first) is type(second)


def test_importable_classes_go_by_reference() -> None:
    body = bytes(codec.encode(Reply(1, True, ValueError("x")))[1])
    assert b"ValueError" in body
    assert b"cloudpickle" not in body
    assert isinstance(pickle.loads(body).value, ValueError)


class _Poison:
    """Pickles fine, fails to unpickle (like a CUDA tensor sent to a process without CUDA)."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (int, ("not a number",))


def test_an_undecodable_message_becomes_undecodable_with_its_id_and_the_stream_goes_on() -> None:
    feed = _Feed()
    feed.push(_wire(Request(7, "f", (_Poison(),), {}, False), Reply(8, True, np.zeros(3))), 5)
    first, second = feed.received
    assert isinstance(first, Undecodable)
    assert (first.id, first.starts_exchange) == (7, True)
    assert "could not be decoded" in str(first.error)
    assert isinstance(second, Reply)
    assert second.id == 8

"""How messages cross the process boundary: pickle protocol 5 frames with out-of-band buffers.

A frame is a 16-byte header (pickle length, buffer count), the buffer lengths, the pickle, then
each buffer. numpy arrays (and CPU torch tensors, which travel as arrays) go out of band: their
memory is written to the socket as is, never copied into the pickle.

Classes and functions that the other process cannot import (defined in `__main__`, in a
notebook, inside a function, or in a module registered with
`cloudpickle.register_pickle_by_value`) travel by value through cloudpickle, cached on both
sides so each crosses once per process rather than with every message.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import pickle
import struct
import sys
import types
import weakref
from collections.abc import Callable
from typing import Any

import cloudpickle

from servekit._runtime.local.workers.messages import STARTS_EXCHANGE, Undecodable

_HEADER = struct.Struct("<QQq?")  # pickle length, buffer count, message id, starts an exchange
_LENGTH = struct.Struct("<Q")
MAX_FRAME_BYTES = 1 << 40


class _Pickler(pickle.Pickler):
    """The C pickler with two detours: by-value classes, and torch tensors as numpy arrays."""

    def reducer_override(self, obj: Any) -> Any:
        kind = type(obj)
        if kind is type or isinstance(obj, type | types.FunctionType):
            if not _importable(obj):
                return _load_by_value, (_by_value_blob(obj),)
            return NotImplemented
        if _is_plain_tensor(obj):  # CUDA tensors arrive on the CPU: device numbers differ per process
            return _tensor_from_numpy, (obj.detach().cpu().numpy(),)
        return NotImplemented


def encode(message: Any) -> list[bytes | memoryview]:
    """The frame for `message`, as parts to write in order (buffers are not copied)."""
    buffers: list[pickle.PickleBuffer] = []
    stream = io.BytesIO()
    _Pickler(stream, protocol=5, buffer_callback=buffers.append).dump(message)
    body = stream.getbuffer()
    key = getattr(message, "id", -1)
    key = key if isinstance(key, int) else -1
    starts = isinstance(message, STARTS_EXCHANGE)
    if not buffers:
        return [_HEADER.pack(len(body), 0, key, starts), body]
    views = [buffer.raw() for buffer in buffers]
    lengths = b"".join(_LENGTH.pack(view.nbytes) for view in views)
    return [_HEADER.pack(len(body), len(views), key, starts), lengths, body, *views]


def decode(body: bytes | memoryview, buffers: list[bytearray], key: int = -1, starts: bool = False) -> Any:
    """The message in a frame's pickle, with its out-of-band buffers; `Undecodable` if it fails."""
    try:
        return pickle.loads(body, buffers=buffers)
    except Exception as exc:
        error = TypeError(f"a message could not be decoded on arrival: {type(exc).__name__}: {exc}")
        return Undecodable(key, starts, error)


class FrameProtocol(asyncio.Protocol):
    """Reads frames from a stream socket and hands each decoded message to `on_message`.

    Whole frames are decoded straight from the bytes the loop delivers; only a partial frame
    at the end is kept for the next read. Out-of-band buffers are copied once into their own
    `bytearray`, so an array that crosses is backed by writable memory of exactly its size.
    """

    def __init__(self, on_message: Callable[[Any], None], on_lost: Callable[[BaseException | None], None]):
        self._on_message = on_message
        self._on_lost = on_lost
        self._rest = bytearray()
        self._pending: _PendingFrame | None = None
        self.transport: asyncio.Transport | None = None
        self._paused = False
        self._drained: asyncio.Event | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: BaseException | None) -> None:
        self.transport = None
        if self._drained is not None:
            self._drained.set()
        self._on_lost(exc)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if self._drained is not None:
            self._drained.set()

    def send(self, message: Any) -> None:
        """Write `message` (raises ConnectionError when the peer is gone)."""
        transport = self.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the connection to the other process is closed")
        transport.writelines(encode(message))

    async def drain(self) -> None:
        """Wait while the socket's write buffer is above its high-water mark."""
        while self._paused and self.transport is not None:
            self._drained = asyncio.Event()
            await self._drained.wait()

    def data_received(self, data: bytes) -> None:
        view = memoryview(data)
        pending = self._pending
        if pending is not None:
            view = view[pending.take(view) :]
            if not pending.complete():
                return
            self._pending = None
            self._on_message(decode(pending.body, pending.buffers, pending.key, pending.starts))
        if not view:
            return
        if not self._rest:
            used = self._parse(view)
            if used < len(view):
                self._rest += view[used:]
            return
        self._rest += view
        with memoryview(self._rest) as rest:
            used = self._parse(rest)
        del self._rest[:used]

    def _parse(self, view: memoryview) -> int:
        """Decode every whole frame at the start of `view`; returns the bytes consumed."""
        start = 0
        size = len(view)
        while size - start >= _HEADER.size:
            body_length: int
            count: int
            key: int
            starts: bool
            body_length, count, key, starts = _HEADER.unpack_from(view, start)
            table = start + _HEADER.size
            body_start = table + count * _LENGTH.size
            body_end = body_start + body_length
            if size < body_end:
                break
            if not count:
                self._on_message(decode(view[body_start:body_end], [], key, starts))
                start = body_end
                continue
            lengths = [_LENGTH.unpack_from(view, table + i * _LENGTH.size)[0] for i in range(count)]
            pending = _PendingFrame(bytes(view[body_start:body_end]), lengths, key, starts)
            start = body_end + pending.take(view[body_end:])
            if not pending.complete():
                self._pending = pending
                return start
            self._on_message(decode(pending.body, pending.buffers, key, starts))
        return start


class _PendingFrame:
    """A frame whose out-of-band buffers are still arriving."""

    def __init__(self, body: bytes, lengths: list[int], key: int, starts: bool) -> None:
        self.body = body
        self.key = key
        self.starts = starts
        self.buffers = [bytearray(length) for length in lengths]
        self._index = 0
        self._offset = 0
        self._skip_empty()

    def take(self, data: memoryview) -> int:
        """Copy what `data` holds of the buffers; returns the bytes consumed."""
        used = 0
        while not self.complete() and used < len(data):
            target = self.buffers[self._index]
            n = min(len(target) - self._offset, len(data) - used)
            target[self._offset : self._offset + n] = data[used : used + n]
            used += n
            self.advance(n)
        return used

    def receiving_buffer(self) -> bool:
        return not self.complete()

    def free_view(self) -> memoryview:
        return memoryview(self.buffers[self._index])[self._offset :]

    def advance(self, nbytes: int) -> None:
        self._offset += nbytes
        if self._offset == len(self.buffers[self._index]):
            self._index += 1
            self._offset = 0
            self._skip_empty()

    def complete(self) -> bool:
        return self._index >= len(self.buffers)

    def _skip_empty(self) -> None:
        while self._index < len(self.buffers) and not self.buffers[self._index]:
            self._index += 1


_importable_cache: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()
_blob_cache: weakref.WeakKeyDictionary[Any, bytes] = weakref.WeakKeyDictionary()
_loaded_cache: dict[bytes, Any] = {}


def _importable(obj: Any) -> bool:
    """Whether the other process can import `obj` by its module and qualified name."""
    try:
        return _importable_cache[obj]
    except (KeyError, TypeError):
        pass
    result = _lookup(obj)
    with contextlib.suppress(TypeError):
        _importable_cache[obj] = result
    return result


def _lookup(obj: Any) -> bool:
    module_name = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if not module_name or not qualname or module_name == "__main__" or "<locals>" in qualname:
        return False
    if module_name in _by_value_modules():
        return False
    module = sys.modules.get(module_name)
    if module is None:
        return False
    value: Any = module
    for part in qualname.split("."):
        value = getattr(value, part, None)
    return value is obj


def _by_value_modules() -> set[str]:
    registered: set[str] = getattr(cloudpickle, "list_registry_pickle_by_value", set)()
    return registered


def _by_value_blob(obj: Any) -> bytes:
    try:
        return _blob_cache[obj]
    except (KeyError, TypeError):
        pass
    blob: bytes = cloudpickle.dumps(obj, protocol=5)
    with contextlib.suppress(TypeError):
        _blob_cache[obj] = blob
    return blob


def _load_by_value(blob: bytes) -> Any:
    loaded = _loaded_cache.get(blob)
    if loaded is None:
        loaded = cloudpickle.loads(blob)
        _loaded_cache[blob] = loaded
    return loaded


def _is_plain_tensor(obj: Any) -> bool:
    """A dense tensor without autograd history whose dtype numpy has."""
    torch = sys.modules.get("torch")
    if torch is None or type(obj) is not torch.Tensor:
        return False
    return bool(not obj.requires_grad and obj.layout == torch.strided) and (
        obj.dtype not in (torch.bfloat16, getattr(torch, "float8_e4m3fn", None))
    )


def _tensor_from_numpy(array: Any) -> Any:
    import torch  # noqa: PLC0415  (only reached when a tensor was sent, so torch is installed)

    return torch.from_numpy(array)

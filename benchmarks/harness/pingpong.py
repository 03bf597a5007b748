"""Floors for a cross-process hop on this machine, without servekit.

Two references, each a parent and a child process on a Unix socket pair:

* ``blocking``: plain blocking ``sendall``/``recv`` of an 8-byte message, no event loop,
  no pickle: what the kernel and the VM charge for two process wake-ups.
* ``asyncio``: both sides on an event loop (uvloop when installed, like servekit), each
  message a length-prefixed pickle-5 frame of ``(id, "echo", (payload,), {})``, the reply
  resolving a future: the least a Python RPC hop built like servekit's can cost.
* ``codec``: the same, framed by servekit's worker codec (``FrameProtocol``, ``Request`` /
  ``Reply``), without servekit's runtime, handles or worker dispatch: how much of a hop the
  transport layer alone costs.

``python -m benchmarks.harness.pingpong child FD MODE`` is the child side.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import socket
import struct
import subprocess
import sys
import time
from typing import Any

from benchmarks.harness.cpuwatch import proc_cpu_s
from benchmarks.harness.server import REPO_ROOT

_LEN = struct.Struct("<Q")


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class _Framed(asyncio.Protocol):
    """Length-prefixed pickle frames; calls ``on_message`` with each decoded message."""

    def __init__(self, on_message: Any) -> None:
        self.on_message = on_message
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        while len(buffer) >= 8:
            (size,) = _LEN.unpack_from(buffer)
            if len(buffer) < 8 + size:
                return
            message = pickle.loads(memoryview(buffer)[8 : 8 + size])
            del buffer[: 8 + size]
            self.on_message(message)

    def send(self, message: Any) -> None:
        body = pickle.dumps(message, protocol=5)
        assert self.transport is not None
        self.transport.writelines([_LEN.pack(len(body)), body])


def _child(fd: int, mode: str) -> None:
    sock = socket.socket(fileno=fd)
    if mode == "blocking":
        while data := sock.recv(64):
            sock.sendall(data)
        return
    loop = _new_loop()
    done = loop.create_future()
    protocol: Any
    if mode == "codec":
        from servekit._runtime.local.workers import codec
        from servekit._runtime.local.workers.messages import Reply

        def reply(message: Any) -> None:
            protocol.send(Reply(message.id, True, message.args[0]))

        protocol = codec.FrameProtocol(reply, lambda exc: done.set_result(None))
    else:

        class Echo(_Framed):
            def connection_lost(self, exc: Exception | None) -> None:
                done.set_result(None)

        protocol = Echo(lambda message: protocol.send((message[0], message[2][0])))
    loop.run_until_complete(loop.connect_accepted_socket(lambda: protocol, sock))
    loop.run_until_complete(done)


class _HopCpu:
    """CPU time of this process and of the child over ``hops`` round trips."""

    def __init__(self, child: int, hops: int) -> None:
        self.child, self.hops = child, hops
        self.start = (proc_cpu_s(os.getpid()), proc_cpu_s(child))
        self.end: tuple[float, float] | None = None

    def stop(self) -> None:
        if self.end is None:
            self.end = (proc_cpu_s(os.getpid()), proc_cpu_s(self.child))

    def per_hop_us(self) -> dict[str, float]:
        self.stop()
        assert self.end is not None
        return {
            "caller_cpu_us_per_hop": (self.end[0] - self.start[0]) / self.hops * 1e6,
            "callee_cpu_us_per_hop": (self.end[1] - self.start[1]) / self.hops * 1e6,
        }


def _spawn(mode: str) -> tuple[socket.socket, subprocess.Popen[bytes]]:
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.harness.pingpong", "child", str(child.fileno()), mode],
        cwd=REPO_ROOT,
        pass_fds=(child.fileno(),),
    )
    child.close()
    return parent, proc


def blocking_samples(calls: int, warmup: int) -> tuple[list[int], dict[str, float]]:
    """Round-trip times (ns) of an 8-byte message, blocking sockets; and CPU µs per hop."""
    sock, proc = _spawn("blocking")
    try:
        message, clock = b"x" * 8, time.perf_counter_ns
        for _ in range(warmup):
            sock.sendall(message)
            sock.recv(64)
        cpu = _HopCpu(proc.pid, calls)
        samples = [0] * calls
        for index in range(calls):
            started = clock()
            sock.sendall(message)
            sock.recv(64)
            samples[index] = clock() - started
        return samples, cpu.per_hop_us()
    finally:
        sock.close()
        proc.wait(10)


def asyncio_samples(
    payload: Any, calls: int, warmup: int, mode: str = "asyncio"
) -> tuple[list[int], dict[str, float]]:
    """Round-trip times (ns) of a pickled echo call, event loops on both sides; and CPU µs per hop.

    ``mode="codec"`` frames the messages with servekit's own worker codec
    (``FrameProtocol`` + its ``Request``/``Reply`` messages) instead of the plain one, still
    without the runtime, handles or the worker's dispatch: the transport layer alone.
    """
    sock, proc = _spawn(mode)
    loop = _new_loop()
    try:
        client = _asyncio_client(loop, sock, proc.pid, payload, calls=calls, warmup=warmup, mode=mode)
        return loop.run_until_complete(client)
    finally:
        loop.close()
        proc.wait(10)


async def _asyncio_client(
    loop: asyncio.AbstractEventLoop,
    sock: socket.socket,
    child: int,
    payload: Any,
    *,
    calls: int,
    warmup: int,
    mode: str,
) -> tuple[list[int], dict[str, float]]:
    waiting: dict[int, asyncio.Future[Any]] = {}
    protocol: Any
    if mode == "codec":
        from servekit._runtime.local.workers import codec
        from servekit._runtime.local.workers.messages import Request

        protocol = codec.FrameProtocol(lambda m: waiting.pop(m.id).set_result(m.value), lambda exc: None)

        def message(key: int) -> Any:
            return Request(key, "echo", (payload,), {}, False)
    else:
        protocol = _Framed(lambda m: waiting.pop(m[0]).set_result(m[1]))

        def message(key: int) -> Any:
            return (key, "echo", (payload,), {})

    await loop.connect_accepted_socket(lambda: protocol, sock)

    async def call(key: int) -> Any:
        future = loop.create_future()
        waiting[key] = future
        protocol.send(message(key))
        return await future

    for key in range(warmup):
        await call(key)
    cpu = _HopCpu(child, calls)
    clock = time.perf_counter_ns
    samples = [0] * calls
    for index in range(calls):
        started = clock()
        await call(warmup + index)
        samples[index] = clock() - started
    cpu.stop()
    assert protocol.transport is not None
    protocol.transport.close()
    return samples, cpu.per_hop_us()


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "child":
        _child(int(sys.argv[2]), sys.argv[3])
    else:
        sys.exit("usage: python -m benchmarks.harness.pingpong child FD {blocking,asyncio,codec}")

"""proxy.upstream.network on real loopback sockets, under asyncio and uvloop: large reads, flow control, and each
way a connection fails mapped to httpcore's exception."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import httpcore
import pytest

from proxy.upstream.network import HIGH_WATER, READ_CHUNK, BufferedBackend, BufferedStream, _interleave
from tests.unit.rawserver import raw_server
from tests.unit.uvicorn_thread import new_loop

LOOPS = ["asyncio", "uvloop"]
BODY = bytes(range(256)) * (3 * 1024 * 1024 // 256)  # 3 MiB: more than the high-water mark


def run(loop_kind: str, test: Callable[[], Awaitable[None]]) -> None:
    with asyncio.Runner(loop_factory=lambda: new_loop(loop_kind)) as runner:
        runner.run(asyncio.wait_for(test(), 30))


async def connect(port: int) -> BufferedStream:
    stream = await BufferedBackend().connect_tcp("127.0.0.1", port, timeout=5)
    assert isinstance(stream, BufferedStream)
    return stream


async def poll(condition: Callable[[], bool], what: str) -> None:
    for _ in range(500):  # bounded: 500 x 10 ms
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def send_then_wait_for_close(data: bytes) -> Callable[[socket.socket], None]:
    def handle(conn: socket.socket) -> None:
        conn.sendall(data)
        conn.recv(1)  # until the client closes

    return handle


def reset(conn: socket.socket) -> None:
    """Close with a reset (RST) instead of an orderly shutdown (FIN)."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_a_read_hands_over_all_that_was_received_and_reading_pauses_at_the_high_water_mark(loop_kind: str) -> None:
    async def test() -> None:
        stream = await connect(port)
        receiver = stream._receiver
        try:
            await poll(lambda: receiver.size >= HIGH_WATER, "the high-water mark")
            # Paused: what the transport buffers stays near the mark, not the 3 MiB the server sent.
            await asyncio.sleep(0.1)
            assert receiver.size < HIGH_WATER + READ_CHUNK
            # httpcore asks for 64 KiB; it gets all that is there, up to READ_CHUNK.
            first = await stream.read(65536, timeout=5)
            assert 65536 < len(first) <= READ_CHUNK
            received = bytearray(first)
            for _ in range(1000):  # bounded; ends only if reading resumed below the mark
                if len(received) == len(BODY):
                    break
                data = await stream.read(65536, timeout=5)
                assert data, "the connection ended early"
                received += data
            assert received == BODY
        finally:
            await stream.aclose()

    with raw_server(send_then_wait_for_close(BODY)) as port:
        run(loop_kind, test)


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_a_read_that_gets_nothing_times_out(loop_kind: str) -> None:
    done = threading.Event()

    async def test() -> None:
        stream = await connect(port)
        try:
            with pytest.raises(httpcore.ReadTimeout):
                await stream.read(65536, timeout=0.1)
        finally:
            await stream.aclose()
            done.set()

    with raw_server(lambda conn: done.wait(10)) as port:
        run(loop_kind, test)


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_a_refused_connection_is_a_connect_error(loop_kind: str) -> None:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        port = sock.getsockname()[1]  # closed on leaving: nothing listens there any more

    async def test() -> None:
        with pytest.raises(httpcore.ConnectError):
            await connect(port)

    run(loop_kind, test)


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_an_orderly_close_reads_as_the_end_and_makes_the_connection_readable(loop_kind: str) -> None:
    async def test() -> None:
        stream = await connect(port)
        try:
            await poll(lambda: stream.get_extra_info("is_readable"), "the connection to be readable")
            received = b""
            for _ in range(10):  # bounded
                data = await stream.read(65536, timeout=5)
                if not data:
                    break
                received += data
            assert received == b"bye"
            assert await stream.read(65536, timeout=5) == b""
        finally:
            await stream.aclose()

    with raw_server(lambda conn: conn.sendall(b"bye")) as port:
        run(loop_kind, test)


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_a_reset_connection_is_a_read_error(loop_kind: str) -> None:
    def handle(conn: socket.socket) -> None:
        conn.recv(100)  # the client's "hello": the reset comes after a read, as a server's would
        reset(conn)

    async def test() -> None:
        stream = await connect(port)
        try:
            await stream.write(b"hello", timeout=5)
            with pytest.raises(httpcore.ReadError):
                for _ in range(10):  # bounded
                    assert await stream.read(65536, timeout=5) != b""
        finally:
            await stream.aclose()

    with raw_server(handle) as port:
        run(loop_kind, test)


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_a_closed_stream_refuses_reads_and_writes(loop_kind: str) -> None:
    async def test() -> None:
        stream = await connect(port)
        await stream.aclose()
        with pytest.raises(httpcore.ReadError):
            await stream.read(65536, timeout=5)
        with pytest.raises(httpcore.WriteError):
            await stream.write(b"GET / HTTP/1.1\r\n\r\n", timeout=5)

    with raw_server(lambda conn: conn.recv(1)) as port:
        run(loop_kind, test)


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_extra_info_names_both_ends(loop_kind: str) -> None:
    async def test() -> None:
        stream = await connect(port)
        try:
            assert stream.get_extra_info("server_addr")[:2] == ("127.0.0.1", port)
            assert stream.get_extra_info("client_addr")[0] == "127.0.0.1"
            assert stream.get_extra_info("socket").fileno() >= 0
            assert stream.get_extra_info("ssl_object") is None
            assert stream.get_extra_info("is_readable") is False
            assert stream.get_extra_info("unknown") is None
        finally:
            await stream.aclose()

    with raw_server(lambda conn: conn.recv(1)) as port:
        run(loop_kind, test)


def test_addresses_alternate_between_families_starting_with_the_first() -> None:
    def info(family: socket.AddressFamily, host: str) -> tuple[Any, ...]:
        return (family, socket.SOCK_STREAM, 6, "", (host, 443))

    infos = [info(socket.AF_INET6, "::1"), info(socket.AF_INET6, "::2"), info(socket.AF_INET, "10.0.0.1")]
    assert [i[4][0] for i in _interleave(infos)] == ["::1", "10.0.0.1", "::2"]

"""SocketRelease: the deadline that resets a socket an ended connection still holds."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest

from wsgateway.release import SocketRelease, bound_unacked_time, is_released, reset


class FakeSocket:
    """What ``get_extra_info("socket")`` returns: a descriptor and its options."""

    def __init__(self) -> None:
        self.fd = 7
        self.options: dict[tuple[int, int], bytes | int] = {}

    def fileno(self) -> int:
        return self.fd

    def setsockopt(self, level: int, name: int, value: bytes | int) -> None:
        if self.fd < 0:
            raise OSError(9, "Bad file descriptor")
        self.options[level, name] = value


class ClosingTransport:
    """A transport whose client may or may not read what is buffered for it."""

    def __init__(self, buffered: int = 0, closing: bool = False) -> None:
        self.buffered = buffered
        self.closing = closing
        self.sock = FakeSocket()
        self.aborts = 0

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def get_extra_info(self, name: str, default: object = None) -> object:
        return self.sock if name == "socket" else default

    def abort(self) -> None:
        self.aborts += 1
        self.closing = True
        self.buffered = 0
        self.sock.fd = -1

    def finish_close(self) -> None:
        """The client read everything: the transport closes its socket."""
        self.closing = True
        self.buffered = 0
        self.sock.fd = -1


def test_released_means_closed_or_closing_with_nothing_left_to_write() -> None:
    assert not is_released(ClosingTransport())  # open
    assert not is_released(ClosingTransport(buffered=10, closing=True))  # waits on the client
    assert is_released(ClosingTransport(closing=True))  # connection_lost is scheduled
    gone = ClosingTransport(buffered=10)
    gone.sock.fd = -1
    assert is_released(gone)


def test_reset_sets_linger_zero_then_aborts() -> None:
    transport = ClosingTransport(buffered=3_000_000)
    reset(transport)
    assert transport.aborts == 1
    # Linger on, 0 s: the kernel drops the unsent bytes and sends RST.
    assert transport.sock.options[socket.SOL_SOCKET, socket.SO_LINGER] == struct.pack("ii", 1, 0)


async def test_a_socket_still_held_at_the_deadline_is_reset() -> None:
    release = SocketRelease(close_timeout=0.05)
    stuck = ClosingTransport(buffered=3_000_000, closing=True)
    release.release(stuck)
    release.release(stuck)  # idempotent: one deadline, from the first call
    assert release.held() == 1
    await asyncio.sleep(0.2)
    assert stuck.aborts == 1
    assert release.held() == 0


async def test_a_clean_close_forgets_the_socket_and_is_never_reset() -> None:
    release = SocketRelease(close_timeout=0.05)
    polite = ClosingTransport(buffered=500)
    release.release(polite)  # the gateway starts a close: deadline armed
    assert release.held() == 1
    polite.finish_close()
    assert release.held() == 0  # a closed socket is not counted, even before it is forgotten
    release.release(polite)  # the close handshake ended: the deadline is dropped
    await asyncio.sleep(0.2)
    assert polite.aborts == 0


async def test_a_released_socket_is_never_tracked() -> None:
    release = SocketRelease(close_timeout=0.05)
    release.release(ClosingTransport(closing=True))
    assert release.held() == 0
    assert not release._pending


@pytest.mark.skipif(not hasattr(socket, "TCP_USER_TIMEOUT"), reason="Linux only")
def test_bound_unacked_time_sets_tcp_user_timeout_in_milliseconds() -> None:
    transport = ClosingTransport()
    bound_unacked_time(transport, 35.0)
    assert transport.sock.options[socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT] == 35_000

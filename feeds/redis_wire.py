"""A few Redis commands, sent and read on a raw socket: the feed fast path's round trip.

redis-py spends about 120 µs of CPU per command on its connection pool, retry wrapper, command
packing and RESP3 parser (measured on the 2-core benchmark machine). For the three pipelined
commands of the feed's hot path, packed bytes and a parser of the replies they can get (arrays
of bulk strings, integers, simple strings and nils) cost about 30 µs. redis-py still opens the
connection (so AUTH, SELECT, TLS and RESP3 negotiation follow the cache's URL and options); this
module then owns that socket, one per thread and process, and never hands it back to the pool.

Any error (a timeout, a reset, an error reply, a reply it does not expect) closes the socket
and raises ``WireError``; the next call connects again.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from typing import Any

TIMEOUT_SECONDS = 1.0
_RECV = 65536


class WireError(Exception):
    """The command did not complete; the connection was dropped."""


class ReplyError(WireError):
    """Redis answered with an error (e.g. NOSCRIPT)."""


class _Incomplete(Exception):
    pass


class _Local(threading.local):
    pool: Any = None
    pid: int = 0
    connection: Any = None  # redis-py's Connection, kept so its socket stays open
    sock: socket.socket | None = None


_local = _Local()


def pack(*args: bytes) -> bytes:
    """A command in RESP (an array of bulk strings)."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        parts += (b"$%d\r\n" % len(arg), arg, b"\r\n")
    return b"".join(parts)


def _parse(data: bytes, pos: int) -> tuple[Any, int]:
    """One reply from ``data[pos:]``: ``(value, position after it)``; _Incomplete if cut."""
    end = data.find(b"\r\n", pos)
    if end < 0:
        raise _Incomplete
    kind, line = data[pos : pos + 1], data[pos + 1 : end]
    pos = end + 2
    if kind == b"$":
        length = int(line)
        if length < 0:
            return None, pos
        if len(data) < pos + length + 2:
            raise _Incomplete
        return data[pos : pos + length], pos + length + 2
    if kind == b":":
        return int(line), pos
    if kind == b"+":
        return line, pos
    if kind in (b"_", b"#"):  # RESP3 null, RESP3 boolean (a Lua false: a missing key)
        return None, pos
    if kind == b"*":
        items = []
        for _ in range(max(int(line), 0)):
            item, pos = _parse(data, pos)
            items.append(item)
        return items, pos
    if kind == b"-":
        raise ReplyError(line.decode(errors="replace"))
    raise WireError(f"unexpected reply type {kind!r}")


def _socket(pool: Any) -> socket.socket:
    local = _local
    if local.sock is not None and local.pool is pool and local.pid == os.getpid():
        return local.sock
    _drop()
    connection = pool.make_connection()
    connection.connect()
    sock = connection._sock
    sock.settimeout(TIMEOUT_SECONDS)
    local.pool, local.pid, local.connection, local.sock = pool, os.getpid(), connection, sock
    return sock


def _drop() -> None:
    local = _local
    if local.connection is not None and local.pid == os.getpid():
        with contextlib.suppress(Exception):  # already broken: dropping it is all that is left
            local.connection.disconnect()
    local.pool, local.connection, local.sock = None, None, None


def call(pool: Any, commands: bytes, replies: int = 1) -> list[Any]:
    """Send packed ``commands`` on this thread's connection to ``pool``'s server in one write;
    their ``replies`` replies, in order."""
    data = b""
    try:
        sock = _socket(pool)
        sock.sendall(commands)
        data = sock.recv(_RECV)
        while True:
            if not data:
                raise WireError("connection closed by the server")
            try:
                values, end = [], 0
                for _ in range(replies):
                    value, end = _parse(data, end)
                    values.append(value)
                break
            except _Incomplete:
                data += sock.recv(_RECV)
        if end != len(data):
            raise WireError("more bytes than the replies")
        return values
    except Exception as exc:
        # Whatever went wrong, what is left on the socket is unknown: never reuse it.
        _drop()
        if isinstance(exc, WireError):
            raise
        raise WireError(repr(exc)) from exc

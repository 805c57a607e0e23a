"""A few Redis commands, sent and read on a raw socket: the feed fast path's round trip.

redis-py spends about 120 µs of CPU per command on its connection pool, retry wrapper, command
packing and RESP3 parser (measured on the 2-core benchmark machine). For the three pipelined
commands of the feed's hot path, packed bytes and a parser of the replies they can get (arrays
of bulk strings, integers, simple strings and nils) cost about 30 µs. redis-py still opens the
connection (so AUTH, SELECT, TLS and RESP3 negotiation follow the cache's URL and options); this
module then owns that socket, one per thread and process, and never hands it back to the pool.

Any error (a timeout, a reset, an error reply, a reply it does not expect) closes the socket
and raises ``WireError``; the next call connects again.

With ``tracking=True`` the connection is switched to RESP3 with ``CLIENT TRACKING ON OPTIN``
(Redis's server-assisted client-side caching): Redis remembers the keys this connection read
right after a ``CLIENT CACHING YES`` and pushes an ``invalidate`` message on it when one of them
changes, expires or is evicted, or when the database is flushed. :func:`poll` collects the
pushes that have arrived without waiting (a zero-timeout poll(2), then a read only if something
came, or the server closed the connection), :func:`invalidations` hands them over, and
:func:`epoch` names the connection they belong to: a new connection (after an error, a fork,
or a switch) has a new epoch, and whatever was cached under the old one must be forgotten,
since pushes sent to a closed connection are lost. ``feeds.fastpath`` keeps its near cache this way.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import select
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


class _Push(list[Any]):
    """A RESP3 push frame (``>``): out-of-band, never the reply to a command."""


class _Local(threading.local):
    pool: Any = None
    pid: int = 0
    connection: Any = None  # redis-py's Connection, kept so its socket stays open
    sock: socket.socket | None = None
    poller: Any = None  # select.poll() with ``sock`` registered, for poll()
    tracking = False
    epoch = 0  # of the open connection; 0 when none is open
    buffer = b""  # bytes read after the last complete frame (a push cut in two)
    invalidated: list[bytes | None]  # keys pushed as changed; None: everything (a flush)

    def __init__(self) -> None:
        self.invalidated = []


_local = _Local()
_epochs = itertools.count(1)


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
    if kind in (b"*", b"~", b">", b"%"):  # array, RESP3 set, push, map (as a flat list)
        count = max(int(line), 0) * (2 if kind == b"%" else 1)
        items: list[Any] = _Push() if kind == b">" else []
        for _ in range(count):
            item, pos = _parse(data, pos)
            items.append(item)
        return items, pos
    if kind == b"-":
        raise ReplyError(line.decode(errors="replace"))
    raise WireError(f"unexpected reply type {kind!r}")


def _socket(pool: Any, tracking: bool) -> socket.socket:
    local = _local
    if (
        local.sock is not None
        and local.pool is pool
        and local.pid == os.getpid()
        and local.tracking == tracking
    ):
        return local.sock
    _drop()
    connection = pool.make_connection()
    connection.connect()
    sock = connection._sock
    sock.settimeout(TIMEOUT_SECONDS)  # also makes the descriptor non-blocking, for poll()
    local.pool, local.pid, local.connection, local.sock = pool, os.getpid(), connection, sock
    if tracking:
        # RESP3, so that invalidation pushes share this connection, then tracking on.
        # OPTIN: only keys read right after CLIENT CACHING YES are tracked.
        sock.sendall(pack(b"HELLO", b"3") + pack(b"CLIENT", b"TRACKING", b"ON", b"OPTIN"))
        _read(sock, 2)
        # Asking the kernel whether anything arrived costs less than a read that fails with
        # EAGAIN, which Python turns into an exception.
        local.poller = select.poll()
        local.poller.register(sock.fileno(), select.POLLIN)
    local.tracking, local.epoch = tracking, next(_epochs)
    return sock


def _drop() -> None:
    local = _local
    if local.connection is not None and local.pid == os.getpid():
        with contextlib.suppress(Exception):  # already broken: dropping it is all that is left
            local.connection.disconnect()
    local.pool, local.connection, local.sock, local.poller = None, None, None, None
    local.tracking, local.epoch, local.buffer = False, 0, b""
    local.invalidated = []


def _take_frames(data: bytes, replies: int) -> tuple[list[Any], bytes] | None:
    """``replies`` replies from ``data``, pushes set aside, and the bytes after the last
    complete frame; None if the replies are not all there yet."""
    values: list[Any] = []
    pushes: list[_Push] = []
    end = 0
    try:
        while True:
            if len(values) == replies and end == len(data):
                break
            frame, end_after = _parse(data, end)
            end = end_after
            if isinstance(frame, _Push):
                pushes.append(frame)
            elif len(values) < replies:
                values.append(frame)
            else:
                raise WireError("more replies than commands")
    except _Incomplete:
        if len(values) < replies:
            return None
    for push in pushes:
        _note(push)
    return values, data[end:]


def _note(push: _Push) -> None:
    if len(push) == 2 and push[0] == b"invalidate":
        keys = push[1]
        if keys is None:
            _local.invalidated.append(None)
        else:
            _local.invalidated.extend(keys)


def _read(sock: socket.socket, replies: int) -> list[Any]:
    data = _local.buffer
    _local.buffer = b""
    while True:
        taken = _take_frames(data, replies) if data else None
        if taken is not None:
            values, _local.buffer = taken
            return values
        chunk = sock.recv(_RECV)
        if not chunk:
            raise WireError("connection closed by the server")
        data += chunk


def call(pool: Any, commands: bytes, replies: int = 1, *, tracking: bool = False) -> list[Any]:
    """Send packed ``commands`` on this thread's connection to ``pool``'s server in one write;
    their ``replies`` replies, in order. ``tracking``: on a RESP3 connection with client
    tracking on (see the module docstring); pushes read meanwhile are kept for
    :func:`invalidations`."""
    try:
        sock = _socket(pool, tracking)
        sock.sendall(commands)
        values = _read(sock, replies)
        if _local.buffer and not tracking:
            raise WireError("more bytes than the replies")
        return values
    except Exception as exc:
        # Whatever went wrong, what is left on the socket is unknown: never reuse it.
        _drop()
        if isinstance(exc, WireError):
            raise
        raise WireError(repr(exc)) from exc


def poll(pool: Any) -> int:
    """Read whatever pushes have arrived on this thread's tracking connection to ``pool``,
    without waiting; the connection's epoch, or 0 if there is no open tracking connection (then
    nothing cached under an earlier epoch may be trusted)."""
    local = _local
    if (
        local.sock is None
        or not local.tracking
        or local.pool is not pool
        or local.pid != os.getpid()
    ):
        return 0
    try:
        if not local.buffer and not local.poller.poll(0):
            return local.epoch  # nothing arrived: the common case
        data = local.buffer
        while True:
            try:
                chunk = os.read(local.sock.fileno(), _RECV)
            except BlockingIOError:
                break
            if not chunk:
                raise WireError("connection closed by the server")
            data += chunk
            if len(chunk) < _RECV:
                break
        if data:
            taken = _take_frames(data, 0)
            local.buffer = data if taken is None else taken[1]
    except Exception:
        _drop()
        return 0
    return local.epoch


def epoch() -> int:
    """The epoch of this thread's open connection; 0 if none is open."""
    return _local.epoch if _local.pid == os.getpid() else 0


def invalidations() -> list[bytes | None]:
    """The keys pushed as changed since the last call (None: all of them), and forget them."""
    taken = _local.invalidated
    if taken:  # most calls find none: hand over the empty list, allocate nothing
        _local.invalidated = []
    return taken

# SPDX-License-Identifier: MIT
"""One connection to mqttbridged's socket: newline-delimited JSON requests, replies matched to
them by id, and events handed to a callback. Used by MQTTClient; usable on its own."""
import asyncio
import inspect
import json
import os
from typing import Any, Callable, Dict, Optional

DEFAULT_SOCKET = "/run/mqttbridge/mqttbridge.sock"
MAX_LINE = 64 << 20  # what the reader accepts from the daemon (a message event with its payload)


def socket_path(path: Optional[str] = None) -> str:
    """The socket to use: `path`, else $MQTTBRIDGE_SOCKET, else the default."""
    return path or os.environ.get("MQTTBRIDGE_SOCKET") or DEFAULT_SOCKET


class Error(Exception):
    """An error the daemon answered: `code` is the protocol's error code (docs/protocol.md),
    e.g. "bad_request", "timeout", "refused"; `reason_code` the broker's MQTT 5 reason code
    when it gave one."""

    def __init__(self, code: str, message: str, reason_code: Optional[int] = None):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.reason_code = reason_code


class Closed(ConnectionError):
    """The connection to the daemon ended (or was never there) before the reply came."""


class Connection:
    """Requests and replies over one Unix socket connection.

    `on_event(event)` is called by the reader task for every event, in order; it may return
    an awaitable, which the reader awaits before reading on (back-pressure). `on_close(exc)`
    is called once when the connection ends by itself (not after close()).
    """

    def __init__(self, on_event: Optional[Callable[[dict], Any]] = None,
                 on_close: Optional[Callable[[Optional[BaseException]], None]] = None):
        self.on_event = on_event
        self.on_close = on_close
        self._reader: Optional[asyncio.StreamReader] = None
        self._writer: Optional[asyncio.StreamWriter] = None
        self._task: Optional[asyncio.Task] = None
        self._pending: Dict[int, asyncio.Future] = {}
        self._next_id = 0
        self.closed = True

    @property
    def waiting(self) -> int:
        """Requests sent whose reply has not come yet."""
        return len(self._pending)

    async def open(self, path: Optional[str] = None, timeout: Optional[float] = None) -> None:
        self._reader, self._writer = await asyncio.wait_for(
            asyncio.open_unix_connection(socket_path(path), limit=MAX_LINE), timeout)
        self.closed = False
        self._task = asyncio.get_running_loop().create_task(self._read())

    async def request(self, op: str, timeout: Optional[float] = None, **fields: Any) -> dict:
        """Send one request and wait for its reply (at most `timeout` seconds: then
        asyncio.TimeoutError, and a late reply is dropped); returns the reply's fields (without
        "id" and "ok"). Raises Error for an error reply, Closed when the connection ends (or
        has ended) first."""
        self._next_id += 1
        rid = self._next_id
        fut = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        try:
            self.send(dict(fields, id=rid, op=op))
            try:
                await self._writer.drain()
            except OSError as e:  # the daemon went away before the reader saw it
                self._shut(e)
                raise Closed(f"the daemon closed the connection ({e})") from e
            reply = await asyncio.wait_for(asyncio.shield(fut), timeout)
        finally:
            self._pending.pop(rid, None)
        if not reply.get("ok"):
            err = reply.get("error") or {}
            raise Error(err.get("code", "internal"), err.get("message", ""), err.get("reason_code"))
        return {k: v for k, v in reply.items() if k not in ("id", "ok")}

    def send(self, obj: dict) -> None:
        """Write one request without waiting for anything (e.g. ack, which has no reply)."""
        if self.closed or self._writer is None:
            raise Closed("not connected to the daemon")
        self._writer.write(json.dumps(obj, separators=(",", ":")).encode() + b"\n")

    async def close(self) -> None:
        """Close; requests waiting end with Closed. on_close is not called."""
        self.on_close = None
        task, self._task = self._task, None
        if task and task is not asyncio.current_task():
            task.cancel()
            try:
                await task
            except BaseException:  # its cancellation, or what ended it: nothing left to say
                pass
        self._shut(None)

    def _shut(self, exc: Optional[BaseException]) -> None:
        was_open = not self.closed
        self.closed = True
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(Closed("the daemon closed the connection"))
        self._pending.clear()
        on_close, self.on_close = self.on_close, None
        if was_open and on_close:
            on_close(exc)

    async def _read(self) -> None:
        exc = None
        try:
            while True:
                line = await self._reader.readline()
                if not line:
                    break
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue  # the daemon writes JSON; nothing else is expected
                if not isinstance(msg, dict):
                    continue
                if "event" not in msg:
                    fut = self._pending.get(msg.get("id"))
                    if fut is not None:
                        if not fut.done():
                            fut.set_result(msg)
                        continue
                    msg = {"event": "error", "error": msg.get("error")}  # e.g. a failed ack
                r = self.on_event(msg) if self.on_event else None
                if inspect.isawaitable(r):
                    await r
        except asyncio.CancelledError:
            raise
        except (OSError, ValueError) as e:  # a reset connection, a line over MAX_LINE
            exc = e
        finally:
            self._shut(exc)

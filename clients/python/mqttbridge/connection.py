# SPDX-License-Identifier: MIT
"""One connection to mqttbridged's socket: newline-delimited JSON requests, replies matched to
them by id, and events handed to a callback. Used by MQTTClient; usable on its own."""
import asyncio
import json
import os

DEFAULT_SOCKET = "/run/mqttbridge/mqttbridge.sock"
MAX_LINE = 64 << 20  # what the reader accepts from the daemon (a message event with its payload)


def socket_path(path: "str | None" = None) -> str:
    """The socket to use: `path`, else $MQTTBRIDGE_SOCKET, else the default."""
    return path or os.environ.get("MQTTBRIDGE_SOCKET") or DEFAULT_SOCKET


class Error(Exception):
    """An error the daemon answered: `code` is the protocol's error code (docs/protocol.md),
    e.g. "bad_request", "timeout", "refused"; `reason_code` the broker's MQTT 5 reason code
    when it gave one."""

    def __init__(self, code, message, reason_code=None):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.reason_code = reason_code


class Closed(ConnectionError):
    """The daemon closed the connection (or it was closed) before the reply came."""


class Connection:
    """Requests and replies over one Unix socket connection. `on_event(event_dict)` is called
    from the reader task for every event, in order; `on_close(exc)` once when it ends."""

    def __init__(self, on_event=None, on_close=None):
        self.on_event = on_event
        self.on_close = on_close
        self._reader = self._writer = self._task = None
        self._pending = {}
        self._next_id = 0
        self.closed = True

    async def open(self, path=None, timeout=None):
        self._reader, self._writer = await asyncio.wait_for(
            asyncio.open_unix_connection(socket_path(path), limit=MAX_LINE), timeout)
        self.closed = False
        self._task = asyncio.get_running_loop().create_task(self._read())

    async def request(self, op: str, **fields) -> dict:
        """Send one request and wait for its reply; returns the reply's fields (without "id"
        and "ok"), raises Error for an error reply and Closed when the connection ends first."""
        if self.closed:
            raise Closed("not connected to the daemon")
        self._next_id += 1
        rid = self._next_id
        fut = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        try:
            self.send(dict(fields, id=rid, op=op))
            await self._writer.drain()
            reply = await fut
        finally:
            self._pending.pop(rid, None)
        if not reply.get("ok"):
            err = reply.get("error") or {}
            raise Error(err.get("code", "internal"), err.get("message", ""), err.get("reason_code"))
        return {k: v for k, v in reply.items() if k not in ("id", "ok")}

    def send(self, obj):
        """Write one request without waiting for anything (e.g. ack, which has no reply)."""
        if self.closed:
            raise Closed("not connected to the daemon")
        self._writer.write(json.dumps(obj, separators=(",", ":")).encode() + b"\n")

    async def close(self):
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        self._shut(None)

    def _shut(self, exc):
        if self.closed and not self._pending and self._writer is None:
            return
        was_open = not self.closed
        self.closed = True
        if self._writer:
            self._writer.close()
            self._writer = None
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(Closed("the daemon closed the connection"))
        self._pending.clear()
        if was_open and self.on_close:
            self.on_close(exc)

    async def _read(self):
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
                if "event" in msg:
                    if self.on_event:
                        self.on_event(msg)
                    continue
                fut = self._pending.get(msg.get("id"))
                if fut and not fut.done():
                    fut.set_result(msg)
                elif self.on_event:  # an error answered to a request without id (ack)
                    self.on_event({"event": "error", "error": msg.get("error")})
        except asyncio.CancelledError:
            raise
        except (OSError, ValueError) as e:
            exc = e
        finally:
            self._shut(exc)

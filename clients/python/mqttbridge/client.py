# SPDX-License-Identifier: MIT
"""MQTTClient: the aiomqttc 1.0 API over mqttbridged. The daemon holds the one broker session;
this client holds a connection to the daemon's socket, its subscriptions (made again after the
daemon restarts) and, optionally, a named session (shared/spec/sessions.md)."""
import asyncio
import base64
import inspect
import logging
from typing import Any, Awaitable, Callable, Dict, Optional, Union

from .connection import Closed, Connection, Error, socket_path
from .stats import MqttStats

log = logging.getLogger("mqttbridge")

# Error codes a publish / subscribe / unsubscribe turns into its failure value (False) rather
# than raises: the broker's or the daemon's answer, not the caller's mistake.
FAILURES = {"timeout", "refused", "queue_full", "shutting_down", "forbidden", "internal",
            "not_subscribed"}
RECONNECT_DELAY = 0.5  # seconds between attempts to reach a daemon that went away
V5_PUBLISH = ("user_properties", "content_type", "payload_format", "message_expiry",
              "response_topic")


Payload = Union[str, bytes, bytearray, memoryview]
MessageCallback = Callable[[str, bytes, bool], Optional[Awaitable[None]]]


class Message:
    """A message as the daemon delivered it (on_message5 and request() give these)."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    seq: Optional[int]
    redelivered: bool
    properties: Dict[str, Any]

    def __init__(self, event: Dict[str, Any]):
        self.topic = event["topic"]
        if "payload_b64" in event:
            self.payload = base64.b64decode(event["payload_b64"])
        else:
            self.payload = event.get("payload", "").encode()
        self.qos = event.get("qos", 0)
        self.retain = bool(event.get("retain"))
        self.seq = event.get("seq")  # in a named session, QoS 1/2
        self.redelivered = bool(event.get("redelivered"))
        self.properties = {k: v for k, v in event.items() if k in V5_PUBLISH}
        if "correlation_data_b64" in event:
            self.properties["correlation_data"] = base64.b64decode(event["correlation_data_b64"])
        elif "correlation_data" in event:
            self.properties["correlation_data"] = event["correlation_data"].encode()

    def __repr__(self):
        return f"Message({self.topic!r}, {self.payload!r}, qos={self.qos}, retain={self.retain})"


def topic_matches(flt: str, topic: str) -> bool:
    """MQTT topic filter matching (a $share/GROUP/ prefix is the filter after it)."""
    if flt.startswith("$share/"):
        flt = flt.split("/", 2)[2] if flt.count("/") >= 2 else ""
    f, t = flt.split("/"), topic.split("/")
    if topic.startswith("$") and f[0] in ("+", "#"):
        return False
    for i, part in enumerate(f):
        if part == "#":
            return True
        if i >= len(t) or (part != "+" and part != t[i]):
            return False
    return len(f) == len(t)


async def _call(fn, *args):
    """A callback, plain or a coroutine function; its exceptions are logged, not raised."""
    if fn is None:
        return
    try:
        r = fn(*args)
        if inspect.isawaitable(r):
            await r
    except Exception:
        log.exception("mqttbridge: callback %r failed", fn)


def _payload_fields(message, prefix="payload"):
    if isinstance(message, str):
        return {prefix: message}
    if isinstance(message, (bytes, bytearray, memoryview)):
        return {prefix + "_b64": base64.b64encode(bytes(message)).decode()}
    raise TypeError(f"{prefix} must be str or bytes, not {type(message).__name__}")


def _v5_fields(kw):
    out = {}
    for k, v in kw.items():
        if k == "correlation_data":
            out.update(_payload_fields(v, "correlation_data"))
        elif k in V5_PUBLISH:
            out[k] = [list(p) for p in v] if k == "user_properties" else v
        else:
            raise TypeError(f"unexpected keyword argument {k!r}")
    return out


def _check_qos(qos):
    if isinstance(qos, bool) or qos not in (0, 1, 2):
        raise ValueError(f"qos must be 0, 1 or 2, not {qos!r}")


class MQTTClient:
    """An asynchronous MQTT client whose broker session is mqttbridged's.

    The broker parameters (client_id, server, port, user, password, keepalive, ssl,
    ssl_params, clean_session, will_*) belong to the daemon's configuration: they are accepted
    so that aiomqttc programs run unchanged, and one that differs from the daemon's is logged
    once as ignored. `socket` is the daemon's socket (else $MQTTBRIDGE_SOCKET, else
    /run/mqttbridge/mqttbridge.sock). `session` names a durable local session: its
    subscriptions stay while the program is away and QoS 1/2 messages wait for it; each is
    acknowledged once its callbacks have returned.
    """

    def __init__(self, client_id: Optional[str] = None, server: Optional[str] = None,
                 port: int = 1883, user: Optional[str] = None, password: Optional[str] = None,
                 keepalive: int = 60, ssl: bool = False, ssl_params: Optional[dict] = None,
                 verbose: int = 0, stats: Optional[MqttStats] = None,
                 clean_session: bool = True, will_topic: Optional[str] = None,
                 will_message: Optional[Payload] = None, will_qos: int = 0,
                 will_retain: bool = False, socket: Optional[str] = None,
                 session: Optional[str] = None, session_expiry: Optional[int] = None):
        self._broker_args = {"client_id": client_id, "server": server, "port": port,
                             "user": user, "password": password, "keepalive": keepalive,
                             "ssl": ssl, "ssl_params": ssl_params, "clean_session": clean_session,
                             "will_topic": will_topic, "will_message": will_message,
                             "will_qos": will_qos, "will_retain": will_retain}
        self.socket = socket_path(socket)
        self.stats = stats
        self.session = session
        self.session_expiry = session_expiry
        self.on_connect = self.on_disconnect = self.on_message = self.on_ping = None
        self.on_message5 = None  # (client, Message): the whole message, MQTT 5 fields too
        self._conn = None
        self._subs = {}  # filter -> (qos, callback, options): made again after a daemon restart
        self._connected = False  # the daemon's broker session is up
        self._up = None  # asyncio.Event: set while _connected
        self._wanted = False  # between a successful connect() and disconnect()
        self._last_error = None
        self._events = None  # asyncio.Queue of (kind, payload) for the dispatcher
        self._tasks = set()
        self._warned = False
        if verbose:
            log.setLevel(logging.DEBUG if verbose > 1 else logging.INFO)

    # ---- connecting ----

    async def connect(self, timeout_sec: float = 10) -> bool:
        """Reach the daemon and wait until its broker session is up: True then (and
        on_connect(client, 0) is called), False when that does not happen within
        `timeout_sec`."""
        if self._wanted and self._conn and not self._conn.closed:
            return await self._wait_up(timeout_sec)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_sec
        self._start_dispatcher()
        try:
            await asyncio.wait_for(self._open(), timeout_sec)
        except (OSError, asyncio.TimeoutError, Error) as e:
            self._last_error = f"cannot reach mqttbridged at {self.socket}: {e}"
            await self._close_conn()
            await self._drain()
            return False
        if not await self._wait_up(max(0.0, deadline - loop.time())):
            await self._close_conn()
            await self._drain()
            return False
        self._wanted = True
        self._post("connect", 0)
        return True

    async def disconnect(self) -> None:
        """Leave the daemon (its broker session goes on for others). on_disconnect(client,
        None) is called."""
        was = self._wanted or (self._conn is not None and not self._conn.closed)
        self._wanted = False
        for t in [t for t in self._tasks if t.get_name() == "mqttbridge-reconnect"]:
            t.cancel()
        await self._close_conn()
        self._connected = False
        if was:
            self._post("disconnect", None)
        await self._drain()

    def get_last_error(self) -> Optional[str]:
        """Why the broker session (or reaching the daemon) last failed, or None."""
        return self._last_error

    @property
    def connected(self) -> bool:
        """Whether the daemon is reachable and its broker session up."""
        return self._connected and self._conn is not None and not self._conn.closed

    async def _open(self):
        conn = Connection(self._on_event, self._on_close)
        await conn.open(self.socket)
        self._conn = conn
        await conn.request("events", connection=True, ping=True)
        resumed = False
        if self.session:
            fields = {"name": self.session}
            if self.session_expiry is not None:
                fields["expiry"] = self.session_expiry
            resumed = (await conn.request("session", **fields))["resumed"]
        if not resumed:
            for flt, (qos, _, opts) in list(self._subs.items()):
                try:
                    await conn.request("subscribe", filter=flt, qos=qos, **opts)
                except Error as e:
                    log.warning("mqttbridge: cannot subscribe to %s again: %s", flt, e)
        status = (await conn.request("status"))["status"]
        self._set_up(bool(status.get("connected")))
        self._last_error = status.get("last_error")
        self._check_args(status)
        await self._refresh_stats()

    def _set_up(self, up):
        self._connected = up
        if self._up is None:
            self._up = asyncio.Event()
        if up:
            self._up.set()
        else:
            self._up.clear()

    async def _wait_up(self, timeout):
        if self._connected:
            return True
        try:
            await asyncio.wait_for(self._up.wait(), timeout)
        except asyncio.TimeoutError:
            self._last_error = self._last_error or "the daemon's broker session is not up"
            return False
        return self._conn is not None and not self._conn.closed

    async def _close_conn(self):
        conn, self._conn = self._conn, None
        if conn:
            conn.on_close = None
            await conn.close()

    def _on_close(self, exc):
        """The daemon went away (or closed this connection): pending calls fail, on_disconnect
        gets -1, and the client tries to reach it again (not after its session was taken
        over by another connection)."""
        self._set_up(False)
        self._last_error = f"mqttbridged closed the connection ({exc or 'end of file'})"
        self._post("disconnect", -1)
        if self._wanted:
            self._spawn(self._reconnect(), "mqttbridge-reconnect")

    async def _reconnect(self):
        while self._wanted:
            await asyncio.sleep(RECONNECT_DELAY)
            try:
                await asyncio.wait_for(self._open(), 10)
            except (OSError, asyncio.TimeoutError, Error):
                await self._close_conn()
                continue
            if self._connected:
                self._post("connect", 0)
            return

    def _check_args(self, status):
        if self._warned:
            return
        self._warned = True
        a = self._broker_args
        host, _, port = (status.get("broker") or "").rpartition(":")
        differs = []
        if a["server"] is not None and a["server"] != host:
            differs.append(f"server={a['server']!r}")
        if a["server"] is not None and str(a["port"]) != port:
            differs.append(f"port={a['port']!r}")
        if a["client_id"] is not None and a["client_id"] != status.get("client_id"):
            differs.append(f"client_id={a['client_id']!r}")
        if a["keepalive"] != 60 and a["keepalive"] != status.get("keepalive"):
            differs.append(f"keepalive={a['keepalive']!r}")
        if bool(a["ssl"]) != bool(status.get("tls")):
            differs.append(f"ssl={a['ssl']!r}")
        for k, default in (("user", None), ("password", None), ("ssl_params", None),
                           ("clean_session", True), ("will_topic", None)):
            if a[k] != default:
                differs.append(f"{k}=...")
        if differs:
            log.warning("mqttbridge: the broker session is the daemon's (see its configuration);"
                        " ignored: %s", ", ".join(differs))

    # ---- operations ----

    def _usable(self):
        return self._conn is not None and not self._conn.closed

    async def _ask(self, op, **fields):
        """A request: its reply, None when the daemon is not reachable, False for a failure
        the caller is told by a return value; other errors raised."""
        if not self._usable():
            return None
        try:
            return await self._conn.request(op, **fields)
        except Closed:
            return None
        except Error as e:
            if e.code not in FAILURES:
                raise
            self._last_error = e.message
            return False

    async def publish(self, topic: str, message: Payload, qos: int = 0, retain: bool = False, *,
                      timeout: Optional[float] = None, **v5: Any) -> Optional[bool]:
        """Publish `message` (str or bytes). True when the broker has it (QoS 0 written, QoS 1
        PUBACK, QoS 2 PUBCOMP), False when it did not confirm in time or refused, None when
        the daemon is not reachable. MQTT 5 keyword arguments: user_properties,
        content_type, payload_format, message_expiry, response_topic, correlation_data.
        `timeout` (seconds) defaults to the daemon's publish_timeout."""
        if not isinstance(topic, str):
            raise TypeError(f"topic must be str, not {type(topic).__name__}")
        _check_qos(qos)
        fields = {"topic": topic, "qos": qos, "retain": bool(retain)}
        fields.update(_payload_fields(message))
        fields.update(_v5_fields(v5))
        if timeout is not None:
            fields["timeout_ms"] = max(1, int(timeout * 1000))
        r = await self._ask("publish", **fields)
        return None if r is None else r is not False

    async def subscribe(self, topic: str, qos: int = 0,
                        callback: Optional[MessageCallback] = None, *, no_local: bool = False,
                        retain_as_published: bool = False, retain_handling: int = 0) -> bool:
        """Subscribe to the filter `topic`. True when granted at the QoS asked. `callback(topic,
        payload, retain)` (plain or async) gets the messages it matches, besides on_message."""
        if not isinstance(topic, str):
            raise TypeError(f"topic must be str, not {type(topic).__name__}")
        _check_qos(qos)
        opts = {}
        if no_local:
            opts["no_local"] = True
        if retain_as_published:
            opts["retain_as_published"] = True
        if retain_handling:
            opts["retain_handling"] = retain_handling
        r = await self._ask("subscribe", filter=topic, qos=qos, **opts)
        if not r:
            return False
        self._subs[topic] = (qos, callback, opts)
        return r.get("granted_qos") == qos

    async def unsubscribe(self, topic: str) -> bool:
        """Stop receiving `topic`. True once the daemon (and the broker) confirmed."""
        if not isinstance(topic, str):
            raise TypeError(f"topic must be str, not {type(topic).__name__}")
        self._subs.pop(topic, None)
        r = await self._ask("unsubscribe", filter=topic)
        return bool(r is not None and r is not False)

    async def request(self, topic: str, message: Payload, *, qos: int = 0,
                      timeout: Optional[float] = None, **v5: Any) -> Message:
        """MQTT 5 request/response: publish `message` and return the response (a Message).
        Raises Error (code "timeout" without one in time, "refused" when nobody can answer)
        and ConnectionError when the daemon is not reachable."""
        if not isinstance(topic, str):
            raise TypeError(f"topic must be str, not {type(topic).__name__}")
        _check_qos(qos)
        if not self._usable():
            raise Closed("not connected to the daemon")
        fields = {"topic": topic, "qos": qos}
        fields.update(_payload_fields(message))
        fields.update(_v5_fields(v5))
        if timeout is not None:
            fields["timeout_ms"] = max(1, int(timeout * 1000))
        r = await self._conn.request("request", **fields)
        return Message(r["response"])

    async def update_stats(self) -> Optional[Dict[str, int]]:
        """The daemon's statistics now (every key it has); a `stats` object given to the
        client is filled from them."""
        r = await self._ask("stats")
        if not r:
            return None
        if self.stats is not None:
            self.stats._fill(r["stats"], self.socket)
        return r["stats"]

    async def _refresh_stats(self):
        if self.stats is not None:
            await self.update_stats()

    # ---- events, in order, on the dispatcher task ----

    def _spawn(self, coro, name):
        t = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)
        return t

    def _start_dispatcher(self):
        if self._events is None:
            self._events = asyncio.Queue()
        if not any(t.get_name() == "mqttbridge-dispatch" for t in self._tasks):
            self._spawn(self._dispatch(), "mqttbridge-dispatch")

    def _post(self, kind, arg):
        if self._events is not None:
            self._events.put_nowait((kind, arg))

    async def _drain(self, timeout=5.0):
        """Until what was posted before now has been dispatched (callbacks get `timeout`
        seconds to finish), then stop the dispatcher."""
        if self._events is not None:
            try:
                await asyncio.wait_for(self._events.join(), timeout)
            except asyncio.TimeoutError:
                log.warning("mqttbridge: callbacks still running at disconnect: cancelled")
        for t in [t for t in self._tasks if t.get_name() == "mqttbridge-dispatch"]:
            t.cancel()

    def _on_event(self, ev):
        kind = ev.get("event")
        if kind == "connected":
            self._set_up(True)
            if self._wanted:  # else connect() is waiting for it, and says so itself
                self._post("connect", 0)
        elif kind == "disconnected":
            self._set_up(False)
            self._last_error = ev.get("reason")
            if self._wanted:
                self._post("disconnect", ev.get("rc"))
        elif kind == "session_taken_over":
            log.warning("mqttbridge: session %s was taken over by another connection",
                        self.session)
            self._wanted = False  # not taken back: the other one has it now
        elif kind == "unsubscribed":
            self._subs.pop(ev.get("filter"), None)
            log.warning("mqttbridge: no longer subscribed to %s: %s", ev.get("filter"),
                        ev.get("reason"))
        elif kind == "dropped":
            log.warning("mqttbridge: %s messages were dropped", ev.get("count"))
        elif kind == "error":
            log.warning("mqttbridge: the daemon answered: %s", ev.get("error"))
        elif kind in ("message", "ping"):
            self._post(kind, ev)

    async def _dispatch(self):
        while True:
            kind, arg = await self._events.get()
            try:
                if kind == "message":
                    await self._deliver(Message(arg))
                elif kind == "ping":
                    await _call(self.on_ping, self, False, arg.get("rtt_ms", 0))
                elif kind == "connect":
                    await _call(self.on_connect, self, arg)
                elif kind == "disconnect":
                    await _call(self.on_disconnect, self, arg)
            except Exception:
                log.exception("mqttbridge: dispatching %s failed", kind)
            finally:
                self._events.task_done()

    async def _deliver(self, m):
        for flt, (_, callback, _) in list(self._subs.items()):
            if callback is not None and topic_matches(flt, m.topic):
                await _call(callback, m.topic, m.payload, m.retain)
        await _call(self.on_message, self, m.topic, m.payload, m.retain)
        await _call(self.on_message5, self, m)
        if m.seq is not None and self._usable():
            try:
                self._conn.send({"op": "ack", "seq": m.seq})  # processed: not sent again
            except Closed:
                pass

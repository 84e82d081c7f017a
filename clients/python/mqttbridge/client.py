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
MAX_QUEUED = 1000  # events waiting for the callbacks before the reader stops reading
DEFAULT_WAIT = 60.0  # bound of a call without a timeout (the daemon answers by its own first)
SLACK = 2.0  # beyond a call's timeout, for the daemon to answer it
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
        self._conn: Optional[Connection] = None
        self._subs: Dict[str, tuple] = {}  # filter -> (qos, callback, options)
        self._connected = False  # the daemon's broker session is up
        self._live = False  # between a successful connect() and disconnect()
        self._wanted = False  # ... and not taken over: reach the daemon again if it goes
        self._opening = False  # _open runs: events it causes are said by its caller
        self._generation = 0  # each disconnect() ends the connect() calls before it
        self._last_error: Optional[str] = None
        self._loop = None  # the event loop the primitives below belong to
        self._tasks: set = set()
        self._warned = False
        if verbose:
            log.setLevel(logging.DEBUG if verbose > 1 else logging.INFO)

    def _bind_loop(self) -> None:
        """The asyncio primitives, made for the running loop (a client may be used in one
        loop, then another)."""
        loop = asyncio.get_running_loop()
        if self._loop is loop:
            return
        self._loop = loop
        self._events: asyncio.Queue = asyncio.Queue()
        self._changed = asyncio.Event()  # the connection or the broker link changed
        self._room = asyncio.Event()  # the dispatcher took an event, or a call waits
        self._lock = asyncio.Lock()  # one connect() or disconnect() at a time
        self._tasks = set()

    # ---- connecting ----

    async def connect(self, timeout_sec: float = 10) -> bool:
        """Reach the daemon and wait until its broker session is up: True then (and
        on_connect(client, 0) is called), False when that does not happen within
        `timeout_sec` (or disconnect() is called meanwhile)."""
        self._bind_loop()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_sec
        generation = self._generation
        async with self._lock:
            if self._live and self._usable():
                return await self._wait_up(deadline, generation)
            if generation != self._generation:
                return False  # disconnect() came first
            self._start_dispatcher()
            try:
                await asyncio.wait_for(self._open(), timeout_sec)
            except (OSError, asyncio.TimeoutError, Error) as e:
                self._last_error = f"cannot reach mqttbridged at {self.socket}: {e or 'timeout'}"
                await self._close_conn()
                return False
            if not await self._wait_up(deadline, generation):
                await self._close_conn()
                return False
            self._live = self._wanted = True
            self._post("connect", 0)
            return True

    async def disconnect(self) -> None:
        """Leave the daemon (its broker session goes on for others); its subscriptions here
        are forgotten. on_disconnect(client, None) is called."""
        self._bind_loop()
        self._wanted = False
        self._generation += 1  # a connect() waiting gives up
        self._changed.set()
        for t in [t for t in self._tasks if t.get_name() == "mqttbridge-reconnect"]:
            t.cancel()
        async with self._lock:
            was = self._live
            self._live = False
            await self._close_conn()
            self._subs.clear()
            self._set_up(False)
            if was:
                self._post("disconnect", None)
            await self._stop_dispatcher()

    def get_last_error(self) -> Optional[str]:
        """Why the broker session (or reaching the daemon) last failed, or None."""
        return self._last_error

    @property
    def connected(self) -> bool:
        """Whether the daemon is reachable and its broker session up."""
        return self._connected and self._usable()

    def _usable(self) -> bool:
        return self._conn is not None and not self._conn.closed

    async def _open(self) -> None:
        """A new connection to the daemon, with events on, the session resumed or the
        subscriptions made again. It becomes the client's only once all that worked."""
        conn = Connection(self._on_event)
        self._opening = True
        try:
            await conn.open(self.socket)
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
        except BaseException:
            await conn.close()
            raise
        finally:
            self._opening = False
        old, self._conn = self._conn, conn
        if old is not None:
            await old.close()
        if conn.closed:  # it ended while the status came: the reconnect loop goes on
            raise Closed("mqttbridged closed the connection")
        conn.on_close = self._on_close
        self._set_up(bool(status.get("connected")))
        self._last_error = status.get("last_error")
        self._check_args(status)
        if self.stats is not None:
            await self.update_stats()

    def _set_up(self, up: bool) -> None:
        self._connected = up
        if self._loop is not None:
            self._changed.set()

    async def _wait_up(self, deadline: float, generation: int) -> bool:
        """Until the broker session is up, the connection ends, disconnect() is called or
        `deadline` (loop time) passes."""
        loop = asyncio.get_running_loop()
        while not self.connected or generation != self._generation:
            if not self._usable() or loop.time() >= deadline or generation != self._generation:
                if self._usable():
                    self._last_error = self._last_error or "the daemon's broker session is not up"
                return False
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), deadline - loop.time())
            except asyncio.TimeoutError:
                pass
        return True

    async def _close_conn(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()
        if self._loop is not None:
            self._changed.set()

    def _on_close(self, exc: Optional[BaseException]) -> None:
        """The daemon went away (or closed this connection): calls waiting end with their
        failure values, on_disconnect gets -1, and the client tries to reach the daemon again
        (not after its session was taken over by another connection)."""
        self._set_up(False)
        self._last_error = f"mqttbridged closed the connection ({exc or 'end of file'})"
        if self._live:
            self._post("disconnect", -1)
        if self._wanted and not any(t.get_name() == "mqttbridge-reconnect" for t in self._tasks):
            self._spawn(self._reconnect(), "mqttbridge-reconnect")

    async def _reconnect(self) -> None:
        while self._wanted:
            await asyncio.sleep(RECONNECT_DELAY)
            async with self._lock:
                if not self._wanted or self._usable():
                    return
                try:
                    await asyncio.wait_for(self._open(), 10)
                except (OSError, asyncio.TimeoutError, Error):
                    continue
                if self._connected:
                    self._post("connect", 0)
                return

    def _check_args(self, status: dict) -> None:
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

    async def _ask(self, op: str, timeout: Optional[float] = None, **fields: Any):
        """A request: its reply; None when the daemon is not reachable (or goes away first);
        False for a failure the caller is told by a return value (the daemon's, or no answer
        within `timeout` + SLACK seconds, or DEFAULT_WAIT); other errors raised."""
        if not self._usable():
            return None
        self._room.set()  # a reader held back by a full queue reads on: a reply is awaited
        bound = (timeout + SLACK) if timeout is not None else DEFAULT_WAIT
        try:
            return await self._conn.request(op, timeout=bound, **fields)
        except Closed:
            return None
        except asyncio.TimeoutError:
            self._last_error = f"no answer from mqttbridged to {op} within {bound:g} s"
            return False
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
        r = await self._ask("publish", timeout, **fields)
        return None if r is None else r is not False

    async def subscribe(self, topic: str, qos: int = 0,
                        callback: Optional[MessageCallback] = None, *, no_local: bool = False,
                        retain_as_published: bool = False, retain_handling: int = 0) -> bool:
        """Subscribe to the filter `topic`. True when granted at the QoS asked. `callback(topic,
        payload, retain)` (plain or async) gets the messages it matches, besides on_message."""
        if not isinstance(topic, str):
            raise TypeError(f"topic must be str, not {type(topic).__name__}")
        if callback is not None and not callable(callback):
            raise TypeError("callback must be callable")
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
        self._room.set()
        bound = (timeout + SLACK) if timeout is not None else DEFAULT_WAIT
        try:
            r = await self._conn.request("request", timeout=bound, **fields)
        except asyncio.TimeoutError:
            raise Error("timeout", f"no answer from mqttbridged within {bound:g} s") from None
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

    # ---- events, in order, on the dispatcher task ----

    def _spawn(self, coro, name: str) -> asyncio.Task:
        t = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)
        return t

    def _start_dispatcher(self) -> None:
        if not any(t.get_name() == "mqttbridge-dispatch" for t in self._tasks):
            self._spawn(self._dispatch(), "mqttbridge-dispatch")

    async def _stop_dispatcher(self, timeout: float = 5.0) -> None:
        """Once what was posted before now has been dispatched (callbacks get `timeout`
        seconds), the dispatcher ends; from a callback, it ends after that callback."""
        dispatchers = [t for t in self._tasks if t.get_name() == "mqttbridge-dispatch"]
        if not dispatchers:
            return
        self._post("stop", None)
        if asyncio.current_task() in dispatchers:
            return
        done, _ = await asyncio.wait(dispatchers, timeout=timeout)
        for t in dispatchers:
            if t not in done:
                log.warning("mqttbridge: callbacks still running at disconnect: cancelled")
                t.cancel()

    def _post(self, kind: str, arg: Any) -> None:
        if self._loop is not None:
            self._events.put_nowait((kind, arg))

    def _on_event(self, ev: dict):
        """From the reader task: bookkeeping now, callbacks through the dispatcher. When more
        than MAX_QUEUED events wait for the callbacks and no call waits for a reply, the
        reader waits (the daemon's flow control then applies: it drops and says so)."""
        kind = ev.get("event")
        if kind == "connected":
            self._set_up(True)
            if self._live and not self._opening:  # else its caller says so
                self._post("connect", 0)
        elif kind == "disconnected":
            self._set_up(False)
            self._last_error = ev.get("reason")
            if self._live and not self._opening:
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
            if self._events.qsize() >= MAX_QUEUED:
                return self._make_room()
        return None

    async def _make_room(self) -> None:
        while (self._events.qsize() >= MAX_QUEUED and self._usable()
               and self._conn.waiting == 0):
            self._room.clear()
            await self._room.wait()

    async def _dispatch(self) -> None:
        while True:
            kind, arg = await self._events.get()
            self._room.set()
            try:
                if kind == "stop":
                    return
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

    async def _deliver(self, m: Message) -> None:
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

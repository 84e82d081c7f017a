# SPDX-License-Identifier: MIT
"""Test harness for mqttbridged integration tests (standard library only).

Every test gets its own mosquitto on a free 127.0.0.1 port and its own daemon with its own
socket in a temporary directory. Waits are event-driven and bounded: nothing sleeps to
synchronise where a reply, an event or a port can be awaited instead.
"""
import contextlib
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import unittest

DAEMON = os.environ.get("MQTTBRIDGED", "build/daemon/mqttbridged")
MQTTCTL = os.environ.get("MQTTCTL", "build/clients/mqttctl")
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
WAIT = float(os.environ.get("TEST_WAIT_SCALE", "1")) * 10  # default bound of a wait, s


# [broker] protocol for daemons whose test does not choose one (meson option test_protocol).
TEST_PROTOCOL = os.environ.get("MQTTBRIDGE_TEST_PROTOCOL") or "auto"
# A runner that is itself a systemd service must not hand its own service's variables to the
# daemons under test: test_systemd sets them where it means them.
for _var in ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "WATCHDOG_USEC",
             "WATCHDOG_PID"):
    os.environ.pop(_var, None)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(pred, timeout=WAIT, what="condition", interval=0.01):
    """Poll `pred` (cheap, local) until true; fail after `timeout` seconds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def port_open(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def paused(proc):
    """The process stopped (SIGSTOP) for the block and continued after it, whatever happens."""
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(proc.pid, signal.SIGCONT)


def qos0_burst(prefix, n, size):
    """n pipelined QoS 0 publish requests without replies awaited, to prefix/0..prefix/n-1,
    each with a payload of `size` bytes."""
    payload = "x" * size
    return "".join(json.dumps({"op": "publish", "topic": f"{prefix}/{i}", "payload": payload,
                               "qos": 0, "wait": False}, separators=(",", ":")) + "\n"
                   for i in range(n)).encode()


class Mosquitto:
    """A real mosquitto broker on a private port and directory."""

    def __init__(self, tmp, port=None, extra="", persistence=False):
        self.tmp = tmp
        self.port = port or free_port()
        self.dir = os.path.join(tmp, f"mosquitto-{self.port}")
        os.makedirs(self.dir, exist_ok=True)
        os.chmod(self.dir, 0o777)  # mosquitto drops to its own user when started as root
        self.conf = os.path.join(self.dir, "mosquitto.conf")
        lines = [f"listener {self.port} 127.0.0.1", "log_dest stderr", "set_tcp_nodelay true",
                 "max_queued_messages 100000", "max_inflight_messages 0"]
        if "allow_anonymous" not in extra:
            lines.append("allow_anonymous true")
        if persistence:
            lines += ["persistence true", f"persistence_location {self.dir}/"]
        with open(self.conf, "w") as f:
            f.write("\n".join(lines) + "\n" + extra + "\n")
        self.proc = None
        self.log = open(os.path.join(self.dir, "log.txt"), "ab")
        self.start()

    def start(self):
        self.proc = subprocess.Popen([MOSQUITTO, "-c", self.conf], stdout=self.log,
                                     stderr=subprocess.STDOUT)
        wait_until(lambda: port_open(self.port) or self.proc.poll() is not None,
                   what=f"mosquitto on port {self.port}")
        if self.proc.poll() is not None:
            raise AssertionError(f"mosquitto exited: {open(self.log.name).read()[-2000:]}")

    def stop(self, sig=signal.SIGTERM):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=WAIT)
        self.proc = None

    def close(self):
        self.stop()
        self.log.close()

    def sub(self, *topics, count=1, qos=1, extra=()):
        """mosquitto_sub in the background; .result() gives the lines it printed."""
        args = ["mosquitto_sub", "-p", str(self.port), "-h", "127.0.0.1", "-q", str(qos),
                "-C", str(count), "-W", str(int(WAIT)), "-v", *extra]
        for t in topics:
            args += ["-t", t]
        return Background(args)

    def pub(self, topic, message, qos=0, retain=False):
        args = ["mosquitto_pub", "-p", str(self.port), "-h", "127.0.0.1", "-t", topic, "-m",
                message, "-q", str(qos)]
        if retain:
            args.append("-r")
        subprocess.run(args, check=True, timeout=WAIT)


class DirectSub:
    """A minimal MQTT 3.1.1 subscriber talking to the broker directly (not through the
    daemon). Subscribed once the constructor returns (SUBACK seen), so a test can rely on
    it receiving what is published afterwards."""

    def __init__(self, port, *topics, qos=1):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        cid = f"direct-{os.getpid()}-{id(self)}".encode()
        body = b"\x00\x04MQTT\x04\x02\x00\x3c" + len(cid).to_bytes(2, "big") + cid
        self._send(0x10, body)
        t, b = self._read()
        assert t >> 4 == 2 and b[1] == 0, f"direct subscriber refused: {b!r}"
        payload = b"\x00\x01" + b"".join(len(x.encode()).to_bytes(2, "big") + x.encode()
                                          + bytes([qos]) for x in topics)
        self._send(0x82, payload)
        t, b = self._read()
        assert t >> 4 == 9, f"expected SUBACK, got type {t >> 4}"

    def _send(self, first, body):
        n, rl = len(body), b""
        while True:
            byte = n % 128
            n //= 128
            rl += bytes([byte | (128 if n else 0)])
            if not n:
                break
        self.sock.sendall(bytes([first]) + rl + body)

    def _exact(self, n):
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise EOFError("broker closed the connection")
            data += chunk
        return data

    def _read(self):
        first = self._exact(1)[0]
        length, mult = 0, 1
        while True:
            b = self._exact(1)[0]
            length += (b & 127) * mult
            mult *= 128
            if not b & 128:
                break
        return first, self._exact(length)

    def next(self, timeout=WAIT):
        """(topic, payload bytes, retain) of the next PUBLISH; acknowledges QoS 1/2."""
        topic, payload, _, retain = self.next_qos(timeout)
        return topic, payload, retain

    def next_qos(self, timeout=WAIT):
        """(topic, payload bytes, QoS, retain) of the next PUBLISH; acknowledges QoS 1/2."""
        self.sock.settimeout(timeout)
        while True:
            first, body = self._read()
            if first >> 4 == 6:  # PUBREL
                self._send(0x70, body[:2])
                continue
            if first >> 4 != 3:
                continue
            tl = int.from_bytes(body[:2], "big")
            topic, rest = body[2:2 + tl].decode(), body[2 + tl:]
            qos = (first >> 1) & 3
            if qos:
                pid, rest = rest[:2], rest[2:]
                self._send(0x40 if qos == 1 else 0x50, pid)
            return topic, rest, qos, bool(first & 1)

    def close(self):
        try:
            self._send(0xE0, b"")
        except OSError:
            pass
        self.sock.close()


class Background:
    """A subprocess whose stdout lines are collected."""

    def __init__(self, args):
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def result(self, timeout=WAIT + 5):
        out, err = self.proc.communicate(timeout=timeout)
        return out.decode(errors="replace").splitlines()


class Daemon:
    """mqttbridged with a generated configuration."""

    def __init__(self, tmp, broker_port, sections=None, args=(), start=True, name="d"):
        self.tmp = tmp
        self.dir = os.path.join(tmp, name)
        os.makedirs(self.dir, exist_ok=True)
        self.socket = os.path.join(self.dir, "mqttbridge.sock")
        self.conf = os.path.join(self.dir, "mqttbridged.conf")
        cfg = {"broker": {"host": f"127.0.0.1:{broker_port}", "reconnect_min": "1",
                          "reconnect_max": "2", "connect_timeout": "5"},
               "ipc": {"socket": self.socket},
               "log": {"level": "debug"}}
        for sec, kv in (sections or {}).items():
            cfg.setdefault(sec, {}).update(kv)
        self.write_config(cfg)
        self.args = list(args)
        self.proc = None
        self.logpath = os.path.join(self.dir, "daemon.log")
        if start:
            self.start()

    def write_config(self, cfg):
        self.cfg = cfg
        with open(self.conf, "w") as f:
            for sec, kv in cfg.items():
                f.write(f"[{sec}]\n")
                for k, v in kv.items():
                    f.write(f"{k} = {v}\n")

    def start(self, wait_connected=True):
        self.log = open(self.logpath, "ab")
        env = dict(os.environ)
        # A small ASan quarantine: freed memory is reused soon enough for RSS bounds to mean
        # something in the sanitizer build too (no effect on a normal build).
        env["ASAN_OPTIONS"] = env.get("ASAN_OPTIONS", "") + ":quarantine_size_mb=8"
        self.proc = subprocess.Popen([DAEMON, "-c", self.conf, *self.args], stdout=self.log,
                                     stderr=subprocess.STDOUT, env=env)
        wait_until(lambda: self.accepting() or self.proc.poll() is not None,
                   what="the daemon socket")
        if self.proc.poll() is not None:
            raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.logtext()}")
        if wait_connected:
            with self.client() as c:
                c.wait_connected()

    def accepting(self):
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(self.socket)
            return True
        except OSError:
            return False

    def client(self):
        return Client(self.socket)

    def logtext(self):
        if not os.path.exists(self.logpath):
            return ""
        with open(self.logpath, errors="replace") as f:
            return f.read()

    def stop(self, sig=signal.SIGTERM):
        """Stop; returns the exit code."""
        if not self.proc:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
            raise AssertionError("daemon did not stop within the bound")
        finally:
            self.log.close()
            self.proc = None
        return rc

    def alive(self):
        return self.proc is not None and self.proc.poll() is None


class Client:
    """One local connection speaking the NDJSON protocol."""

    def __init__(self, path, connect=True):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if connect:
            self.sock.connect(path)
        self.buf = b""
        self.events = []  # events and replies not yet consumed
        self.next_id = 1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self.sock.close()

    def send_raw(self, data):
        self.sock.sendall(data)

    def send(self, obj):
        self.send_raw(json.dumps(obj).encode() + b"\n")

    def _read_line(self, deadline):
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("timed out waiting for a line from the daemon")
            r, _, _ = select.select([self.sock], [], [], left)
            if not r:
                continue
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise EOFError("daemon closed the connection")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def next(self, pred=lambda m: True, timeout=WAIT):
        """The first message (consumed or new) matching pred."""
        for i, m in enumerate(self.events):
            if pred(m):
                return self.events.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            m = self._read_line(deadline)
            if pred(m):
                return m
            self.events.append(m)

    def request(self, op, timeout=WAIT, **fields):
        rid = self.next_id
        self.next_id += 1
        self.send({"id": rid, "op": op, **fields})
        return self.next(lambda m: "event" not in m and m.get("id") == rid, timeout)

    def ok(self, op, **fields):
        r = self.request(op, **fields)
        assert r.get("ok") is True, f"{op} failed: {r}"
        return r

    def event(self, name, timeout=WAIT, pred=lambda m: True):
        return self.next(lambda m: m.get("event") == name and pred(m), timeout)

    def messages(self, n, timeout=WAIT):
        return [self.event("message", timeout) for _ in range(n)]

    def wait_connected(self, timeout=WAIT):
        wait_until(lambda: self.ok("status")["status"]["connected"], timeout,
                   what="the daemon to connect to the broker", interval=0.02)


class FakeBroker:
    """A scripted MQTT broker for faults a real one will not produce.

    handler(conn, broker) runs per accepted connection on a thread. Helpers read one packet
    and write raw bytes.
    """

    def __init__(self, handler):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.handler = handler
        self.connects = []  # (time, CONNECT packet bytes)
        self.lock = threading.Condition()
        self.closed = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn):
        conn.settimeout(WAIT * 3)
        try:
            self.handler(conn, self)
        except (OSError, EOFError):
            pass
        finally:
            conn.close()

    @staticmethod
    def read_packet(conn):
        def exact(n):
            data = b""
            while len(data) < n:
                chunk = conn.recv(n - len(data))
                if not chunk:
                    raise EOFError
                data += chunk
            return data
        head = exact(1)
        length, mult = 0, 1
        while True:
            b = exact(1)[0]
            length += (b & 127) * mult
            mult *= 128
            if not b & 128:
                break
        return head[0], exact(length)

    def read_connect(self, conn):
        t, body = self.read_packet(conn)
        assert t >> 4 == 1, f"expected CONNECT, got type {t >> 4}"
        with self.lock:
            self.connects.append((time.monotonic(), body))
            self.lock.notify_all()
        return body

    def wait_connects(self, n, timeout=WAIT):
        with self.lock:
            ok = self.lock.wait_for(lambda: len(self.connects) >= n, timeout)
        assert ok, f"only {len(self.connects)} CONNECTs within {timeout}s, wanted {n}"
        return self.connects

    def close(self):
        self.closed = True
        self.sock.close()


def connack_then(data=b""):
    """A FakeBroker handler: accept the CONNECT, send CONNACK and `data`, then read (and
    ignore) everything, answering nothing - not even PINGREQ."""
    def handler(conn, fb):
        fb.read_connect(conn)
        conn.sendall(b"\x20\x02\x00\x00" + data)
        while True:
            fb.read_packet(conn)
    return handler


class TestCase(unittest.TestCase):
    """Base class: a temp dir, cleaned up with everything started in it."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="mqttbridge-test-")
        os.chmod(self.tmp, 0o755)
        self.cleanups = []
        self.fake_ports = set()

    def tearDown(self):
        errors = []
        for f in reversed(self.cleanups):
            try:
                f()
            except Exception as e:  # keep cleaning, then fail with the first problem
                errors.append(e)
        if os.environ.get("KEEP_TEST_DIRS") or errors:
            print(f"kept {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)
        if errors:
            raise errors[0]

    def broker(self, **kw):
        m = Mosquitto(self.tmp, **kw)
        self.cleanups.append(m.close)
        return m

    def daemon(self, broker_port, **kw):
        # The protocol a test does not choose: 3.1.1 toward a scripted broker (they speak
        # 3.1.1), else the build's test_protocol (scripts/test runs the suite once with the
        # default, auto, and once with 3.1.1).
        protocol = "3.1.1" if broker_port in self.fake_ports else TEST_PROTOCOL
        sections = {k: dict(v) for k, v in (kw.get("sections") or {}).items()}
        sections.setdefault("broker", {}).setdefault("protocol", protocol)
        kw["sections"] = sections
        d = Daemon(self.tmp, broker_port, **kw)

        def stop():
            if d.alive():
                rc = d.stop()
                self.assertEqual(rc, 0, f"daemon exit status {rc}:\n{d.logtext()[-3000:]}")
            # Sanitizer reports fail the test even when everything else passed.
            for line in d.logtext().splitlines():
                for bad in ("ERROR: AddressSanitizer", "runtime error:", "ERROR: LeakSanitizer"):
                    self.assertNotIn(bad, line, f"in {d.logpath}")
        self.cleanups.append(stop)
        return d

    def direct_sub(self, port, *topics, qos=1):
        s = DirectSub(port, *topics, qos=qos)
        self.cleanups.append(s.close)
        return s

    def broker_with_acl(self, rules):
        """mosquitto with an acl_file holding `rules` (mosquitto's own syntax)."""
        acl = os.path.join(self.tmp, f"acl-{free_port()}")
        with open(acl, "w") as f:
            f.write(rules)
        os.chmod(acl, 0o644)  # mosquitto reads it as its own user
        return self.broker(extra=f"acl_file {acl}")

    def broker_with_password(self, user, password):
        """mosquitto that admits only `user` with `password`."""
        pwfile = os.path.join(self.tmp, f"passwd-{user}")
        open(pwfile, "w").close()
        subprocess.run(["mosquitto_passwd", "-b", pwfile, user, password], check=True,
                       timeout=WAIT)
        os.chmod(pwfile, 0o644)
        return self.broker(extra=f"allow_anonymous false\npassword_file {pwfile}")

    def fake_broker(self, handler):
        f = FakeBroker(handler)
        self.fake_ports.add(f.port)
        self.cleanups.append(f.close)
        return f


def main():
    unittest.main(verbosity=2)


class Proxy:
    """A TCP proxy between the daemon and the broker, for faults on the wire.

    mode "pass" forwards; "stall" keeps connections open but forwards nothing (a half-open
    link); "hold-up" / "hold-down" hold back only what goes to the broker / to the daemon
    (acknowledgements that never arrive); "refuse" closes new connections at once (the
    broker is away); with cut_after =
    (lo, hi) each connection is closed after a random number of bytes in [lo, hi] (both
    directions counted), in the middle of whatever packet it is. drop() cuts every open
    connection now. drop_up / drop_down: MQTT packet types (e.g. 5 for PUBREC) silently
    discarded on their way to the broker / to the daemon.
    """

    def __init__(self, upstream_port, seed=1):
        import random
        self.rng = random.Random(seed)
        self.upstream = upstream_port
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.mode = "pass"
        self.cut_after = None
        self.connections = 0
        self.cuts = 0
        self.closed = False
        self.open = set()
        self.drop_up, self.drop_down = set(), set()
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def drop(self):
        with self.lock:
            pairs, self.open = list(self.open), set()
        for pair in pairs:
            for s in pair:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _accept(self):
        while not self.closed:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            if self.mode == "refuse":
                c.close()
                continue
            try:
                u = socket.create_connection(("127.0.0.1", self.upstream), timeout=5)
            except OSError:
                c.close()
                continue
            with self.lock:
                self.open.add((c, u))
                self.connections += 1
                budget = [self.rng.randint(*self.cut_after)] if self.cut_after else [None]
            for a, b, hold in ((c, u, "hold-up"), (u, c, "hold-down")):
                threading.Thread(target=self._pump, args=(a, b, budget, (c, u), hold),
                                 daemon=True).start()

    @staticmethod
    def _packets(buf):
        """Split whole MQTT packets off the front of buf: (packets, rest)."""
        out = []
        while True:
            length, mult, i, complete = 0, 1, 1, False
            while i < len(buf) and i <= 4:
                b = buf[i]
                i += 1
                length += (b & 127) * mult
                mult *= 128
                if not b & 128:
                    complete = True
                    break
            if not complete or len(buf) < i + length:
                return out, buf
            out.append(buf[:i + length])
            buf = buf[i + length:]

    def _filter(self, data, pending, drop):
        """The bytes to forward once the packet types in `drop` are taken out."""
        if not drop and not pending[0]:
            return data
        packets, pending[0] = self._packets(pending[0] + data)
        return b"".join(p for p in packets if p[0] >> 4 not in drop)

    def _pump(self, src, dst, budget, pair, hold):
        pending = [b""]
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                data = self._filter(data, pending,
                                    self.drop_up if hold == "hold-up" else self.drop_down)
                while self.mode in ("stall", hold) and not self.closed:
                    time.sleep(0.05)  # holding bytes back is the fault being injected
                with self.lock:
                    if budget[0] is not None:
                        if len(data) >= budget[0]:
                            dst.sendall(data[:budget[0]])
                            self.cuts += 1
                            raise OSError("cut")
                        budget[0] -= len(data)
                dst.sendall(data)
        except OSError:
            pass
        with self.lock:
            self.open.discard(pair)
        for s in pair:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self):
        self.closed = True
        self.sock.close()

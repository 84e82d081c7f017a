#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""The systemd service protocol, tested without systemd as PID 1: the units, sd_notify
messages on a test-bound NOTIFY_SOCKET, socket activation, graceful stop, meson install."""
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time

from harness import DAEMON, MQTTCTL, WAIT, Client, TestCase, main, wait_until

SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "../..")
BUILD = os.environ.get("MESON_BUILD_ROOT", os.path.join(SRC, "build"))


class Notify:
    """A datagram socket standing in for systemd's notification socket."""

    def __init__(self, path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.messages = []

    def next(self, pred, timeout=WAIT):
        """The first message (seen or new) for which pred(fields) holds."""
        for i, m in enumerate(self.messages):
            if pred(m):
                return self.messages.pop(i)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.sock.settimeout(max(0.01, end - time.monotonic()))
            try:
                data = self.sock.recv(4096).decode()
            except socket.timeout:
                break
            fields = dict(l.split("=", 1) for l in data.split("\n") if "=" in l)
            fields["_at"] = time.monotonic()
            if pred(fields):
                return fields
            self.messages.append(fields)
        raise AssertionError(f"no matching sd_notify message within {timeout}s; "
                             f"seen: {self.messages}")

    def close(self):
        self.sock.close()


def maps_libsystemd(pid):
    with open(f"/proc/{pid}/maps") as f:
        return "/libsystemd.so.0" in f.read()


class Service(TestCase):
    def notify(self):
        n = Notify(os.path.join(self.tmp, "notify.sock"))
        self.cleanups.append(n.close)
        return n

    def test_units_verify_and_security(self):
        units = os.path.join(self.tmp, "units")
        os.makedirs(units)
        with open(os.path.join(SRC, "systemd/mqttbridged.service.in")) as f:
            text = f.read()
        with open(os.path.join(units, "mqttbridged.service"), "w") as f:
            f.write(re.sub(r"@sbindir@/mqttbridged", os.path.abspath(DAEMON),
                           text.replace("@sysconfdir@", "/etc")))
        shutil.copy(os.path.join(SRC, "systemd/mqttbridged.socket"), units)
        r = subprocess.run(["systemd-analyze", "verify", "--man=no",
                            "mqttbridged.service", "mqttbridged.socket"],
                           cwd=units, capture_output=True, text=True)
        # Unknown keys and bad values only warn: any output at all is a failure.
        self.assertEqual((r.returncode, r.stdout + r.stderr), (0, ""))
        r = subprocess.run(["systemd-analyze", "security", "--offline=true",
                            "mqttbridged.service"], cwd=units, capture_output=True, text=True)
        level = float(re.search(r"Overall exposure level for \S+: ([\d.]+)", r.stdout).group(1))
        self.assertLessEqual(level, 1.5, r.stdout)

    def test_notify_protocol(self):
        n = self.notify()
        m = self.broker()
        os.environ["NOTIFY_SOCKET"] = n.path
        os.environ["WATCHDOG_USEC"] = "400000"
        try:
            d = self.daemon(m.port)
        finally:
            del os.environ["NOTIFY_SOCKET"]
            del os.environ["WATCHDOG_USEC"]
        n.next(lambda f: f.get("READY") == "1")
        self.assertTrue(maps_libsystemd(d.proc.pid))
        n.next(lambda f: f.get("STATUS", "").startswith("connected to 127.0.0.1:"))
        # Watchdog pings every WATCHDOG_USEC / 2 from the event loop.
        pings = [n.next(lambda f: f.get("WATCHDOG") == "1")["_at"] for _ in range(4)]
        gaps = [b - a for a, b in zip(pings, pings[1:])]
        self.assertTrue(all(0.1 < g < 0.35 for g in gaps), gaps)
        # STATUS follows the broker.
        m.stop()
        st = n.next(lambda f: f.get("STATUS", "").startswith("reconnecting in"))
        self.assertIn("closed the connection", st["STATUS"])
        m.start()
        n.next(lambda f: f.get("STATUS", "").startswith("connected to"))
        # RELOADING then READY around SIGHUP.
        d.proc.send_signal(signal.SIGHUP)
        n.next(lambda f: f.get("RELOADING") == "1")
        n.next(lambda f: f.get("READY") == "1")
        self.assertEqual(d.stop(), 0)
        n.next(lambda f: f.get("STOPPING") == "1")

    def test_libsystemd_only_under_systemd(self):
        # Started by hand nothing of systemd's is mapped: a megabyte of RSS saved.
        m = self.broker()
        d = self.daemon(m.port)
        with d.client() as c:
            c.ok("status")
        self.assertFalse(maps_libsystemd(d.proc.pid))

    def test_sockets_passed_to_another_process_are_not_ours(self):
        # LISTEN_FDS inherited with LISTEN_PID naming another process (sd_listen_fds(3)):
        # the daemon binds its own socket and does not even load libsystemd.
        m = self.broker()
        os.environ.update(LISTEN_FDS="1", LISTEN_PID="1")
        try:
            d = self.daemon(m.port)
        finally:
            del os.environ["LISTEN_FDS"], os.environ["LISTEN_PID"]
        with d.client() as c:
            self.assertTrue(c.ok("status")["status"]["connected"])
        self.assertFalse(maps_libsystemd(d.proc.pid))

    def test_ready_before_the_broker(self):
        from harness import free_port
        n = self.notify()
        os.environ["NOTIFY_SOCKET"] = n.path
        try:
            d = self.daemon(free_port(), start=False)
            d.start(wait_connected=False)
        finally:
            del os.environ["NOTIFY_SOCKET"]
        n.next(lambda f: f.get("READY") == "1")
        with d.client() as c:  # local apps can queue while the broker is away
            c.ok("publish", topic="early", payload="x", qos=1, wait=False)

    def test_socket_activation(self):
        m = self.broker()
        d = self.daemon(m.port, start=False)
        sock = os.path.join(self.tmp, "activated.sock")
        log = open(os.path.join(self.tmp, "activate.log"), "wb")
        p = subprocess.Popen(["systemd-socket-activate", "-l", sock, DAEMON, "-c", d.conf],
                             stdout=log, stderr=subprocess.STDOUT)
        def connected():
            c = Client(sock, connect=False)
            try:
                c.sock.connect(sock)
                return c
            except (FileNotFoundError, ConnectionRefusedError):  # not yet bound, or not listening
                c.sock.close()
                return None

        try:
            # The client connects before the daemon even exists; it is started for it.
            with wait_until(connected, what="the listening socket") as c:
                wait_until(lambda: c.ok("status")["status"]["connected"])
                c.ok("subscribe", filter="sa/#", qos=1)
                c.ok("publish", topic="sa/1", payload="activated", qos=1)
                self.assertEqual(c.event("message")["payload"], "activated")
        finally:
            p.send_signal(signal.SIGTERM)
            self.assertEqual(p.wait(timeout=WAIT), 0)
            log.close()
        with open(log.name) as f:
            self.assertIn("listening on the socket passed by systemd", f.read())

    def test_stop_waits_for_inflight_acks(self):
        events = []

        def handler(conn, fb):
            fb.read_connect(conn)
            conn.sendall(bytes([0x20, 2, 0, 0]))
            while True:
                t, body = fb.read_packet(conn)
                kind = t >> 4
                events.append(kind)
                if kind == 3:  # PUBLISH QoS 1: acknowledge late
                    pid = body[2 + int.from_bytes(body[:2], "big"):][:2]
                    threading.Timer(0.4, lambda: (events.append("PUBACK"),
                                                  conn.sendall(b"\x40\x02" + pid))).start()
                elif kind == 14:
                    return
        fb = self.fake_broker(handler)
        n = self.notify()
        os.environ["NOTIFY_SOCKET"] = n.path
        try:
            d = self.daemon(fb.port)
        finally:
            del os.environ["NOTIFY_SOCKET"]
        with d.client() as c:
            c.ok("publish", topic="late", payload="x", qos=1, wait=False)
            wait_until(lambda: 3 in events, what="the PUBLISH at the broker")
            d.proc.send_signal(signal.SIGTERM)
            n.next(lambda f: f.get("STOPPING") == "1")
            # During the grace, new work is refused.
            r = c.request("publish", topic="late", payload="y", qos=1)
            self.assertEqual(r["error"]["code"], "shutting_down")
        self.assertEqual(d.stop(), 0)
        self.assertEqual(events[-2:], ["PUBACK", 14])  # DISCONNECT after the PUBACK
        self.assertIn("stopping after 1 in-flight messages are acknowledged", d.logtext())

    def test_journal_priorities(self):
        m = self.broker()
        os.environ["JOURNAL_STREAM"] = "8:1234"
        try:
            d = self.daemon(m.port)
        finally:
            del os.environ["JOURNAL_STREAM"]
        self.assertRegex(d.logtext(), r"(?m)^<6>mqttbridged [\d.]+ started")
        self.assertRegex(d.logtext(), r"(?m)^<7>TCP connected to")

    def test_meson_install_lays_out_every_file(self):
        dest = os.path.join(self.tmp, "dest")
        r = subprocess.run(["meson", "install", "-C", BUILD, "--no-rebuild", "--destdir", dest],
                           capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        files = {os.path.relpath(os.path.join(dp, f), dest)
                 for dp, _, fs in os.walk(dest) for f in fs}
        rel = {re.sub(r"^usr/(local/)?", "", f) for f in files}
        for want in ("sbin/mqttbridged", "bin/mqttctl", "lib/systemd/system/mqttbridged.service",
                     "lib/systemd/system/mqttbridged.socket", "lib/sysusers.d/mqttbridge.conf",
                     "lib/tmpfiles.d/mqttbridge.conf", "share/man/man8/mqttbridged.8",
                     "share/man/man1/mqttctl.1", "share/man/man5/mqttbridged.conf.5",
                     "share/bash-completion/completions/mqttctl",
                     "etc/mqttbridge/mqttbridged.conf"):
            self.assertIn(want, rel, sorted(files))
        self.assertTrue(any(f.endswith("/mqttbridge/mqttbridge-tls.so") for f in rel),
                        sorted(files))
        conf = next(os.path.join(dest, f) for f in files if f.endswith("etc/mqttbridge/mqttbridged.conf"))
        # A second install keeps the admin's file.
        with open(conf, "w") as f:
            f.write("[broker]\nhost = mine\n")
        r = subprocess.run(["meson", "install", "-C", BUILD, "--no-rebuild", "--destdir", dest],
                           capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(conf) as f:
            self.assertEqual(f.read(), "[broker]\nhost = mine\n")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Fault injection: the broker, the network, the daemon itself and local clients misbehave;
no QoS 1 message that the daemon accepted may be lost. Each case is bounded in time and
prints sent / received / duplicated / lost (docs/reliability.md shows the figures)."""
import json
import os
import signal
import socket
import sys
import threading
import time

from harness import WAIT, Client, Proxy, TestCase, connack_then, main, wait_until

REPORT = []


def report(case, sent, got):
    """got: list of payloads received (with duplicates)."""
    uniq = set(got)
    lost = len(set(sent) - uniq)
    row = (case, len(sent), len(uniq), len(got) - len(uniq), lost)
    REPORT.append(row)
    return lost


def tearDownModule():
    print("\n%-44s %8s %8s %8s %6s" % ("case", "sent", "received", "dups", "lost"),
          file=sys.stderr)
    for row in REPORT:
        print("%-44s %8d %8d %8d %6d" % row, file=sys.stderr)


def publish_batch(c, topic, ids, qos=1):
    """Pipelined publishes (wait: false); returns how many were accepted."""
    c.send_raw("".join(json.dumps({"id": i, "op": "publish", "topic": f"{topic}/{i}",
                                   "payload": str(i), "qos": qos, "wait": False}) + "\n"
                       for i in ids).encode())
    ok = 0
    for _ in ids:
        ok += bool(c.next(lambda m: "event" not in m, timeout=WAIT * 3)["ok"])
    return ok


class Collector:
    """A local client of a daemon that counts every message on a filter, on a thread."""

    def __init__(self, d, flt):
        self.c = d.client()
        self.c.ok("subscribe", filter=flt, qos=1)
        self.got = []
        self.cond = threading.Condition()
        self.stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop:
            try:
                m = self.c.next(lambda m: m.get("event") == "message", timeout=0.5)
            except AssertionError:
                continue
            except (EOFError, OSError, ValueError):
                return
            with self.cond:
                self.got.append(m["payload"])
                self.cond.notify_all()

    def wait_unique(self, n, timeout):
        with self.cond:
            ok = self.cond.wait_for(lambda: len(set(self.got)) >= n, timeout)
        return ok

    def close(self):
        self.stop = True
        self.thread.join(timeout=5)
        self.c.close()


class Faults(TestCase):
    def collector(self, d, flt):
        col = Collector(d, flt)
        self.cleanups.append(col.close)
        return col

    def test_broker_restart_during_20000_messages(self):
        m = self.broker(persistence=True)
        pub = self.daemon(m.port, name="pub")
        sub = self.daemon(m.port, name="sub", sections={
            "broker": {"clean_session": "false", "client_id": "fault-sub"}})
        col = self.collector(sub, "f/#")
        clients = [pub.client() for _ in range(4)]
        sent = []
        try:
            for rnd in range(10):
                if rnd == 4:
                    m.stop()  # mosquitto saves its sessions and queued messages
                if rnd == 6:
                    m.start()
                for k, c in enumerate(clients):
                    ids = range(rnd * 2000 + k * 500, rnd * 2000 + k * 500 + 500)
                    self.assertEqual(publish_batch(c, f"f/{k}", ids), 500)
                    sent += [str(i) for i in ids]
        finally:
            for c in clients:
                c.close()
        self.assertTrue(col.wait_unique(20000, timeout=60), f"{len(set(col.got))} of 20000")
        self.assertEqual(report("broker restart, 4 publishers, QoS 1", sent, col.got), 0)

    def test_broker_unreachable_20s(self):
        m = self.broker()
        d = self.daemon(m.port)
        col = self.collector(d, "u/#")
        with d.client() as c:
            c.ok("events", connection=True)
            m.stop()
            c.event("disconnected")
            stopped = time.monotonic()
            sent = []
            i = 0
            while time.monotonic() - stopped < 20:  # publish all through the outage
                self.assertEqual(publish_batch(c, "u", range(i, i + 100)), 100)
                sent += [str(k) for k in range(i, i + 100)]
                i += 100
                c.ok("ping")
                time.sleep(0.2)  # spread over the 20 s outage, which is the point here
            self.assertEqual(c.ok("status")["status"]["queued"], len(sent))
            m.start()
            c.event("connected", timeout=WAIT)
        # The restored subscription comes before the queue: everything drains to us.
        self.assertTrue(col.wait_unique(len(sent), timeout=30))
        self.assertEqual(report("broker unreachable 20 s, QoS 1", sent, col.got), 0)

    def test_daemon_kill_9_mid_stream_with_spool(self):
        m = self.broker()
        spool = os.path.join(self.tmp, "spool")
        d = self.daemon(m.port, sections={"queue": {"spool_dir": spool, "fsync": "batch"}})
        direct = self.direct_sub(m.port, "k/#")
        accepted = []
        c = d.client()
        c.send_raw("".join(json.dumps({"id": i, "op": "publish", "topic": f"k/{i}",
                                       "payload": str(i), "qos": 1, "wait": False}) + "\n"
                           for i in range(5000)).encode())
        try:
            while len(accepted) < 2500:  # kill it half way through
                r = c.next(lambda x: "event" not in x)
                if r["ok"]:
                    accepted.append(str(r["id"]))
        finally:
            d.stop(signal.SIGKILL)
            c.close()
        d.start()
        got = []
        want = set(accepted)
        deadline = time.monotonic() + 60
        while not want <= set(got) and time.monotonic() < deadline:
            got.append(direct.next(timeout=10)[1].decode())
        self.assertEqual(report("daemon kill -9 mid-stream, spool, QoS 1", accepted, got), 0)

    def test_stalled_link_detected_by_keepalive(self):
        m = self.broker()
        proxy = Proxy(m.port)
        self.cleanups.append(proxy.close)
        d = self.daemon(proxy.port, sections={"broker": {"keepalive": "1"}})
        direct = self.direct_sub(m.port, "st/#")
        with d.client() as c:
            c.ok("events", connection=True)
            proxy.mode = "stall"
            t0 = time.monotonic()
            self.assertEqual(publish_batch(c, "st", range(100)), 100)
            e = c.event("disconnected", timeout=10)
            detected = time.monotonic() - t0
            self.assertLess(detected, 1.5 * 1 + 1.5)
            self.assertRegex(e["reason"], "no PINGRESP|broker silent")
            proxy.mode = "pass"
            c.event("connected", timeout=10)
        sent = [str(i) for i in range(100)]
        got = []
        while not set(sent) <= set(got):
            got.append(direct.next()[1].decode())
        self.assertEqual(report("half-open link (stall), keepalive 1 s", sent, got), 0)

    def test_connection_cut_at_random_points(self):
        m = self.broker()
        proxy = Proxy(m.port, seed=42)
        proxy.cut_after = (300, 6000)
        self.cleanups.append(proxy.close)
        d = self.daemon(proxy.port, sections={"broker": {"reconnect_min": "1",
                                                         "reconnect_max": "1"}},
                        start=False)
        d.start(wait_connected=False)
        direct = self.direct_sub(m.port, "cut/#")
        sent = [str(i) for i in range(3000)]
        with d.client() as c:
            self.assertEqual(publish_batch(c, "cut", range(3000)), 3000)
            got = []
            deadline = time.monotonic() + 90
            while len(set(got)) < 3000 and time.monotonic() < deadline:
                got.append(direct.next(timeout=30)[1].decode())
            self.assertTrue(d.alive())
        self.assertGreaterEqual(proxy.cuts, 10)
        self.assertEqual(report(f"link cut at random points ({proxy.cuts} cuts)", sent, got), 0)

    def test_oversized_packet_from_broker(self):
        # A PUBLISH announcing 200 MB: refused from its header, not buffered.
        fb = self.fake_broker(connack_then(bytes([0x30, 0x80, 0x80, 0x80, 0x64]) + b"\x00\x01a"))
        d = self.daemon(fb.port, start=False)
        d.start(wait_connected=False)
        fb.wait_connects(2)
        self.assertIn("packet larger than the maximum packet size", d.logtext())
        self.assertTrue(d.alive())

    def test_1000_clients_connect_and_leave(self):
        m = self.broker()
        d = self.daemon(m.port)
        for i in range(1000):
            with d.client() as c:
                if i % 3 == 0:
                    c.ok("subscribe", filter=f"churn/{i % 10}", qos=1)
                elif i % 3 == 1:
                    c.send_raw(b'{"op":"ping"}\n{"op":"pub')  # and leave mid-request
        with d.client() as c:
            wait_until(lambda: c.ok("status")["status"]["local_clients"] == 1,
                       what="every churned client to be gone")
            st = c.ok("status")["status"]
            self.assertEqual(st["subscriptions"], 0)
            self.assertTrue(st["connected"])


if __name__ == "__main__":
    main()

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
    twice = len(got) - len(uniq)
    row = (case, len(sent), len(uniq), twice, lost)
    REPORT.append(row)
    return lost


def qos_of(i):
    return 1 + i % 2  # odd ids QoS 2, even ids QoS 1


def twice_at_qos2(got):
    seen, twice = set(), []
    for p in got:
        if p in seen and qos_of(int(p.split("/")[-1])) == 2:
            twice.append(p)
        seen.add(p)
    return twice


def tearDownModule():
    print("\n%-44s %8s %8s %8s %6s" % ("case", "sent", "received", "dups", "lost"),
          file=sys.stderr)
    for row in REPORT:
        print("%-44s %8d %8d %8d %6d" % row, file=sys.stderr)


def publish_batch(c, topic, ids, qos=1):
    """Pipelined publishes (wait: false); returns how many were accepted. qos may be a
    function of the id."""
    q = qos if callable(qos) else (lambda i: qos)
    c.send_raw("".join(json.dumps({"id": i, "op": "publish", "topic": f"{topic}/{i}",
                                   "payload": f"{topic}/{i}", "qos": q(i), "wait": False})
                       + "\n" for i in ids).encode())
    ok, errors = 0, set()
    for _ in ids:
        r = c.next(lambda m: "event" not in m, timeout=WAIT * 3)
        ok += bool(r["ok"])
        if not r["ok"]:
            errors.add(r["error"]["message"])
    if errors:
        print(f"publish errors: {sorted(errors)[:3]}", file=sys.stderr)
    return ok


class Collector:
    """A local client of a daemon that counts every message on a filter, on a thread."""

    def __init__(self, d, flt, qos=1):
        self.c = d.client()
        self.c.ok("subscribe", filter=flt, qos=qos)
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

    def wait_all(self, want, timeout):
        want = set(want)
        with self.cond:
            return self.cond.wait_for(lambda: want <= set(self.got), timeout)

    def close(self):
        self.stop = True
        self.thread.join(timeout=5)
        self.c.close()


class Reconnecting:
    """A local client of d that connects again when d was restarted under it."""

    def __init__(self, d):
        self.d, self.c = d, d.client()

    def send_raw(self, data):
        try:
            self.c.send_raw(data)
        except OSError:
            self.c.close()
            self.c = self.d.client()
            self.c.send_raw(data)

    def next(self, *args, **kw):
        return self.c.next(*args, **kw)

    def close(self):
        self.c.close()


class Faults(TestCase):
    def collector(self, d, flt, qos=1):
        col = Collector(d, flt, qos)
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
                    sent += [f"f/{k}/{i}" for i in ids]
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
                sent += [f"u/{k}" for k in range(i, i + 100)]
                i += 100
                c.ok("ping")
                time.sleep(0.2)  # spread over the 20 s outage, which is the point here
            self.assertEqual(c.ok("status")["status"]["queued"], len(sent))
            m.start()
            c.event("connected", timeout=WAIT)
        # The restored subscription comes before the queue: everything drains to us.
        self.assertTrue(col.wait_unique(len(sent), timeout=30))
        self.assertEqual(report("broker unreachable 20 s, QoS 1", sent, col.got), 0)

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
        sent = [f"st/{i}" for i in range(100)]
        got = []
        while not set(sent) <= set(got):
            got.append(direct.next()[1].decode())
        self.assertEqual(report("half-open link (stall), keepalive 1 s", sent, got), 0)

    def persistent(self, port, name, **sections):
        cfg = {"broker": {"clean_session": "false", "client_id": f"fault-{name}",
                          "reconnect_min": "1", "reconnect_max": "1"}}
        for k, v in sections.items():
            cfg.setdefault(k, {}).update(v)
        d = self.daemon(port, name=name, sections=cfg, start=False)
        d.start(wait_connected=False)
        return d

    def broker_restart_phase(self, m, case, streams, between=None, proxy=None):
        """More messages on each (client, prefix, collector) of `streams`, with the broker
        restarted (keeping its sessions) half way and `between` called after that: none may be
        lost. Duplicates are counted, not refused: mosquitto 2.0.11 restores a QoS 2 message
        it had sent PUBREL for as a PUBLISH (DUP) instead of a PUBREL, which no receiver can
        tell from a new message (docs/reliability.md)."""
        halves = (range(100000, 101000), range(101000, 102000))
        for half in halves:
            for c, prefix, _ in streams:
                self.assertEqual(publish_batch(c, prefix, half, qos_of), len(half))
            if half is halves[0]:
                m.stop()
                if proxy:
                    # mosquitto 2.0.11 sends everything it restored for a client at once
                    # after a restart, whatever the client's Receive Maximum: a link cut
                    # every 4-30 KB then hardly ever carries an acknowledgement back before
                    # the next cut (the whole backlog came again 8 times over in one run
                    # here, and it ran out of time once in CI). Cut less often from here on.
                    proxy.cut_after = (30000, 120000)
                m.start()
                if between:
                    between()
        for c, prefix, col in streams:
            sent = [f"{prefix}/{i}" for h in halves for i in h]
            self.assertTrue(col.wait_all(sent, timeout=120),
                            f"{prefix}: {len(set(sent) - set(col.got))} of {len(sent)} missing")
            got = [g for g in col.got if int(g.split("/")[-1]) >= 100000]
            self.assertEqual(report(f"{case}, {prefix}", sent, got), 0)

    def test_100_cuts_both_directions_qos1_qos2_and_a_broker_restart(self):
        """D reaches the broker through a proxy that cuts every connection after a random
        number of bytes; it publishes out/# (to S) and receives in/# (from P). Half of each
        stream is QoS 2: none lost, none twice. Then the broker restarts during both streams
        (keeping its sessions): none lost."""
        m = self.broker(persistence=True)
        proxy = Proxy(m.port, seed=42)
        proxy.cut_after = (4000, 30000)
        self.cleanups.append(proxy.close)
        # A link cut after every few kilobytes makes progress only if what the broker sends
        # at once after a reconnect fits in one: MQTT 5's Receive Maximum bounds it. With the
        # default (65535) d was seen reconnecting round and round, its in-flight messages never
        # acknowledged, in 2 of 5 runs here (docs/reliability.md).
        d = self.persistent(proxy.port, "d", broker={"receive_maximum": "20"})
        s = self.persistent(m.port, "s")
        p = self.persistent(m.port, "p")
        out_col = self.collector(s, "out/#", qos=2)
        in_col = self.collector(d, "in/#", qos=2)
        sent_out, sent_in = [], []
        deadline = time.monotonic() + 240
        with d.client() as dc, p.client() as pc:
            rnd = 0
            while (proxy.cuts < 100 or len(sent_out) < 5000) and time.monotonic() < deadline:
                ids = range(rnd * 500, rnd * 500 + 500)
                self.assertEqual(publish_batch(dc, "out", ids, qos_of), 500)
                self.assertEqual(publish_batch(pc, "in", ids, qos_of), 500)
                sent_out += [f"out/{i}" for i in ids]
                sent_in += [f"in/{i}" for i in ids]
                rnd += 1
                # Paced by delivery: at most two rounds outstanding in each direction.
                self.assertTrue(out_col.wait_unique(len(sent_out) - 1000, timeout=60))
                self.assertTrue(in_col.wait_unique(len(sent_in) - 1000, timeout=60))
            self.assertTrue(out_col.wait_all(sent_out, timeout=120),
                            f"{len(set(out_col.got))} of {len(sent_out)} out")
            self.assertTrue(in_col.wait_all(sent_in, timeout=120),
                            f"{len(set(in_col.got))} of {len(sent_in)} in")
            self.assertGreaterEqual(proxy.cuts, 100)
            case = f"{proxy.cuts} cuts, QoS 1+2"
            self.assertEqual(report(f"{case}, out", sent_out, out_col.got), 0)
            self.assertEqual(report(f"{case}, in", sent_in, in_col.got), 0)
            self.assertEqual(twice_at_qos2(out_col.got), [])
            self.assertEqual(twice_at_qos2(in_col.got), [])
            self.broker_restart_phase(m, "broker restart + cuts, QoS 1+2",
                                      [(dc, "out", out_col), (pc, "in", in_col)], proxy=proxy)

    def test_daemon_kill_9_every_few_seconds_with_spool(self):
        """20 000 QoS 1/2 messages through a daemon killed every 2 000 messages sent (every
        0.2 s or so here): every accepted one arrives, no QoS 2 one twice. Then the broker
        restarts, and the daemon is killed once more, during another stream: none lost."""
        m = self.broker(persistence=True)
        spool = os.path.join(self.tmp, "spool")
        d = self.persistent(m.port, "k", queue={"spool_dir": spool, "fsync": "batch"})
        s = self.persistent(m.port, "ks")
        col = self.collector(s, "k9/#", qos=2)
        accepted, kills, i, n = [], 0, 0, 20000
        deadline = time.monotonic() + 180
        while i < n and time.monotonic() < deadline:
            c = d.client()
            try:
                while i < n:
                    ids = range(i, min(i + 200, n))
                    c.send_raw("".join(json.dumps({
                        "id": k, "op": "publish", "topic": f"k9/{k}", "payload": f"k9/{k}",
                        "qos": qos_of(k), "wait": False}) + "\n" for k in ids).encode())
                    i = ids[-1] + 1  # unanswered ones are not sent again: no local retries
                    for _ in ids:
                        r = c.next(lambda x: "event" not in x)
                        if r["ok"]:
                            accepted.append(f"k9/{r['id']}")
                    if i % 2000 == 0:
                        break
            except (EOFError, OSError, AssertionError):
                pass
            finally:
                c.close()
            if i < n:
                d.stop(signal.SIGKILL)
                kills += 1
                d.start(wait_connected=False)
        self.assertEqual(i, n)
        self.assertGreaterEqual(kills, 3)
        self.assertTrue(col.wait_all(accepted, timeout=120))
        self.assertEqual(report(f"daemon kill -9 x{kills}, spool, QoS 1+2", accepted,
                                [g for g in col.got if g in set(accepted)]), 0)
        self.assertEqual(twice_at_qos2(col.got), [])

        def kill_and_restart():
            d.stop(signal.SIGKILL)
            d.start(wait_connected=False)
        c = Reconnecting(d)
        self.cleanups.append(c.close)
        self.broker_restart_phase(m, "broker restart + kill -9, spool, QoS 1+2",
                                  [(c, "k9", col)], between=kill_and_restart)

    def test_oversized_packet_from_broker(self):
        # A PUBLISH announcing 200 MB, over [broker] maximum_packet_size: refused from its
        # header, not buffered.
        fb = self.fake_broker(connack_then(bytes([0x30, 0x80, 0x80, 0x80, 0x64]) + b"\x00\x01a"))
        d = self.daemon(fb.port, start=False,
                        sections={"broker": {"maximum_packet_size": "16M"}})
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

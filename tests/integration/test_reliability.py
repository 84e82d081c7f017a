#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Nothing lost, nothing twice: fire-and-forget publishers that vanish, refused
resubscriptions, retained messages from brokers that answer out of order, and the limits
that must agree with each other."""
import os
import signal
import socket
import struct
import subprocess
import threading

from harness import DAEMON, WAIT, Proxy, TestCase, main, paused, qos0_burst, wait_until


def publish_lines(prefix, n, qos_of=lambda i: 1 + i % 2):
    return "".join(
        f'{{"id":{i},"op":"publish","topic":"{prefix}/{i}","payload":"{i}","qos":{qos_of(i)},'
        f'"wait":false}}\n' for i in range(n)).encode()


def burst_and_vanish(path, data, reset):
    """Write a burst of requests and go: with `reset`, after the replies have started to
    arrive unread (so the daemon's writes meet a reset connection), else at once."""
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    s.sendall(data)
    if reset:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.recv(1)  # one reply byte read; the rest stays unread when we close
    s.close()


class VanishingPublishers(TestCase):
    """Publishers with wait: false that close before any reply, with a spool."""

    def run_bursts(self, d, prefix, clients=20, per_client=50):
        lines = [publish_lines(f"{prefix}/{k}", per_client) for k in range(clients)]
        threads = [threading.Thread(target=burst_and_vanish, args=(d.socket, data, k % 2))
                   for k, data in enumerate(lines)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT)
        return {f"{prefix}/{k}/{i}" for k in range(clients) for i in range(per_client)}

    def test_bursts_then_close_with_broker_up_and_away(self):
        for fsync in ("always", "batch"):
            for broker_up in (True, False):
                with self.subTest(fsync=fsync, broker_up=broker_up):
                    m = self.broker()
                    proxy = Proxy(m.port)
                    self.cleanups.append(proxy.close)
                    spool = os.path.join(self.tmp, f"spool-{fsync}-{broker_up}")
                    d = self.daemon(proxy.port, name=f"d-{fsync}-{broker_up}", sections={
                        "queue": {"spool_dir": spool, "fsync": fsync}})
                    direct = self.direct_sub(m.port, "v/#", qos=2)
                    if not broker_up:
                        with d.client() as c:
                            c.ok("events", connection=True)
                            proxy.mode = "refuse"
                            proxy.drop()
                            c.event("disconnected")
                    want = self.run_bursts(d, "v")
                    with d.client() as c:  # still alive and answering
                        self.assertTrue(c.ok("ping")["ok"])
                    proxy.mode = "pass"
                    got = [direct.next()[0] for _ in range(len(want))]
                    self.assertEqual(set(got), want)
                    self.assertEqual(len(got), len(want), "a QoS 2 message arrived twice")
                    self.assertEqual(d.stop(), 0)

    def test_sigterm_with_a_batch_pending(self):
        m = self.broker()
        spool = os.path.join(self.tmp, "spool")
        d = self.daemon(m.port, sections={"queue": {"spool_dir": spool, "fsync": "batch"}})
        with d.client() as c:
            c.ok("events", connection=True)
            m.stop()
            c.event("disconnected")
        data = publish_lines("t", 300)
        s = socket.socket(socket.AF_UNIX)
        s.connect(d.socket)
        s.sendall(data)
        s.recv(1)  # the daemon has started answering: a batch is pending
        d.proc.send_signal(signal.SIGTERM)
        s.close()
        self.assertEqual(d.stop(), 0)
        # Whatever was accepted is in the spool and goes out after a restart.
        m.start()
        direct = self.direct_sub(m.port, "t/#", qos=2)
        d.start()
        with d.client() as c:
            wait_until(lambda: c.ok("stats")["stats"]["spool_pending"] == 0,
                       what="the spool to drain")
            n = c.ok("stats")["stats"]["pub_ok_count"]
        got = {direct.next()[0] for _ in range(n)}
        self.assertEqual(len(got), n)


def scripted_broker(on_subscribe):
    """A FakeBroker handler: CONNACK, PINGRESP for every PINGREQ, UNSUBACK for every
    UNSUBSCRIBE, and on_subscribe(conn, fb, packet_id, filter, later) for each SUBSCRIBE,
    `later` being true from the second connection on."""
    def handler(conn, fb):
        fb.read_connect(conn)
        later = len(fb.connects) > 1
        conn.sendall(b"\x20\x02\x00\x00")
        while True:
            t, body = fb.read_packet(conn)
            if t == 0xC0:
                conn.sendall(b"\xd0\x00")
            elif t == 0x82:
                n = int.from_bytes(body[2:4], "big")
                on_subscribe(conn, fb, body[:2], body[4:4 + n], later)
            elif t == 0xA2:
                conn.sendall(b"\xb0\x02" + body[:2])
            elif t == 0xE0:
                return
    return handler


def refuse_secret_later(conn, fb, pid, flt, later):
    """Grant every subscription on the first connection, refuse secret/# (SUBACK 0x80) on
    later ones: mosquitto 2.0.11 grants ACL-denied MQTT 3.1.1 subscriptions (it only
    withholds the messages), so the refusal has to be scripted."""
    refused = later and flt.startswith(b"secret")
    conn.sendall(b"\x90\x03" + pid + (b"\x80" if refused else b"\x01"))


class Backlog(TestCase):
    def test_a_backlog_drains_with_nothing_else_happening(self):
        """A queue of more than one tick's step (the session encodes 128 KiB at a time) goes
        out once the broker reads again, with no other event to drive it: it once went a step
        per keepalive timer (2 500 messages a second in the benchmark)."""
        m = self.broker()
        d = self.daemon(m.port, sections={"broker": {"keepalive": "60"}})
        ext = self.direct_sub(m.port, "bk/#", qos=0)
        n = 60000  # 12 MB of PUBLISH: more than the sockets between hold
        with d.client() as c:
            with paused(m.proc):  # the broker stops reading: a queue builds
                c.send_raw(qos0_burst("bk", n, 180))
                c.ok("ping")  # all of it read
                self.assertGreater(c.ok("status")["status"]["queued"], 0)
            got = {ext.next(timeout=WAIT)[0] for _ in range(n)}
        self.assertEqual(got, {f"bk/{i}" for i in range(n)})


class RefusedResubscription(TestCase):
    def test_holders_told_and_subscription_forgotten(self):
        fb = self.fake_broker(scripted_broker(refuse_secret_later))
        d = self.daemon(fb.port)  # clean session: subscriptions are restored at reconnect
        with d.client() as c, d.client() as other:
            c.ok("events", connection=True)
            self.assertEqual(c.ok("subscribe", filter="secret/#", qos=1)["granted_qos"], 1)
            other.ok("subscribe", filter="secret/#", qos=1)
            c.ok("subscribe", filter="open/#", qos=1)
            c.ok("reconnect")
            c.event("connected")
            for cl in (c, other):
                ev = cl.event("unsubscribed")
                self.assertEqual(ev["filter"], "secret/#")
                self.assertIn("refused", ev["reason"])
            st = c.ok("status")["status"]
            self.assertEqual(st["subscriptions_lost"], 1)
            self.assertIn("secret/#", st["last_subscription_lost"])
            self.assertEqual(c.ok("stats")["stats"]["subscriptions_lost"], 1)
            self.assertEqual(st["subscriptions"], 1)  # open/# only
            # Not held any more: a new subscribe asks the broker (and is refused there).
            r = c.request("subscribe", filter="secret/#", qos=1)
            self.assertEqual(r["error"]["code"], "refused")
            r = other.request("unsubscribe", filter="secret/#")
            self.assertEqual(r["error"]["code"], "not_subscribed")
            c.ok("unsubscribe", filter="open/#")


def answer_retained(order):
    """A SUBSCRIBE answered in `order`: "pingresp-first": a PINGREQ that came before the
    SUBACK is answered first, then SUBACK, then the retained PUBLISH (a broker handling
    packets concurrently); "retained-first": the retained PUBLISH, then the SUBACK."""
    def on_subscribe(conn, fb, pid, flt, later):
        retained = b"\x31" + bytes([2 + 5 + 3]) + b"\x00\x05ret/a" + b"old"
        if order == "retained-first":
            conn.sendall(retained + b"\x90\x03" + pid + b"\x00")
            return
        conn.settimeout(0.5)  # how long a PINGREQ may take to follow the SUBSCRIBE
        try:
            if fb.read_packet(conn)[0] == 0xC0:
                conn.sendall(b"\xd0\x00")
        except socket.timeout:
            pass
        conn.settimeout(WAIT * 3)
        conn.sendall(b"\x90\x03" + pid + b"\x00" + retained)
    return on_subscribe


class RetainedOutOfOrder(TestCase):
    def test_retained_arrives_whatever_the_order(self):
        for order in ("pingresp-first", "retained-first"):
            with self.subTest(order=order):
                fb = self.fake_broker(scripted_broker(answer_retained(order)))
                d = self.daemon(fb.port, name=f"d-{order}")
                with d.client() as c:
                    c.ok("subscribe", filter="ret/#")
                    ev = c.event("message")
                    self.assertEqual((ev["topic"], ev["payload"], ev["retain"]),
                                     ("ret/a", "old", True))

    def test_with_a_real_broker_many_subscribers(self):
        m = self.broker()
        m.pub("r/1", "one", retain=True)
        d = self.daemon(m.port)
        clients = [d.client() for _ in range(20)]
        try:
            for c in clients:
                c.send({"id": 1, "op": "subscribe", "filter": "r/#"})
            for c in clients:
                ev = c.event("message")
                self.assertEqual((ev["payload"], ev["retain"]), ("one", True))
        finally:
            for c in clients:
                c.close()


class FullDisk(TestCase):
    def tiny_tmpfs(self, size="1m"):
        mnt = os.path.join(self.tmp, "tiny")
        os.makedirs(mnt)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", mnt],
                           capture_output=True)
        if r.returncode != 0:
            self.skipTest(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
        self.cleanups.append(lambda: subprocess.run(["umount", "-l", mnt], check=True))
        return mnt

    def test_spool_cannot_write_then_space_comes_back(self):
        mnt = self.tiny_tmpfs()
        filler = os.path.join(mnt, "filler")
        with open(filler, "wb") as f:
            f.write(b"x" * (900 * 1024))
        m = self.broker()
        proxy = Proxy(m.port)
        self.cleanups.append(proxy.close)
        d = self.daemon(proxy.port, sections={
            "queue": {"spool_dir": os.path.join(mnt, "spool"), "fsync": "always"}})
        direct = self.direct_sub(m.port, "fd/#", qos=1)
        payload = "p" * 10000
        with d.client() as c:
            c.ok("events", connection=True)
            proxy.mode = "refuse"  # the broker is away: everything stays in the spool
            proxy.drop()
            c.event("disconnected")
            accepted, refused = [], None
            for i in range(100):
                r = c.request("publish", topic=f"fd/{i}", payload=payload, qos=1, wait=False)
                if not r["ok"]:
                    refused = r
                    break
                accepted.append(f"fd/{i}")
            self.assertIsNotNone(refused, "the tiny disk never filled up")
            self.assertEqual(refused["error"]["code"], "queue_full")
            self.assertIn("No space left on device", refused["error"]["message"])
            self.assertIn("not accepted", refused["error"]["message"])
            # Everything else goes on: QoS 0, status, a second refusal with the same words.
            c.ok("publish", topic="fd/q0", payload="zero", qos=0, wait=False)
            st = c.ok("status")["status"]
            self.assertIn("No space left", st["spool_error"])
            r = c.request("publish", topic="fd/again", payload=payload, qos=2, wait=False)
            self.assertEqual(r["error"]["code"], "queue_full")
            # Space comes back: accepted again without any action.
            os.unlink(filler)
            c.ok("publish", topic="fd/after", payload="after", qos=1, wait=False)
            accepted.append("fd/after")
            self.assertIsNone(c.ok("status")["status"]["spool_error"])
            proxy.mode = "pass"
            got = set()
            while not set(accepted) <= got:
                got.add(direct.next()[0])
        log = d.logtext()
        self.assertEqual(log.count("cannot write to"), 1, "logged once per episode")
        self.assertIn("works again", log)


class Limits(TestCase):
    def test_check_config_refuses_what_cannot_work(self):
        conf = os.path.join(self.tmp, "c.conf")
        with open(conf, "w") as f:
            f.write(f"[ipc]\nsocket = {self.tmp}/s\nmax_line = 1073741824\n")
        r = subprocess.run([DAEMON, "-c", conf, "--check-config"], capture_output=True,
                           timeout=WAIT)
        self.assertEqual(r.returncode, 1)
        self.assertIn(b"ipc.max_line", r.stderr)
        self.assertIn(b"256 MiB", r.stderr)

    def test_repeated_subscribes_while_away_stay_bounded(self):
        fb = self.fake_broker(lambda conn, fb: fb.read_connect(conn))  # never answers
        d = self.daemon(fb.port, start=False)
        d.start(wait_connected=False)
        with d.client() as c:
            n = 20000
            c.send_raw("".join(f'{{"id":{i},"op":"subscribe","filter":"same/#",'
                               f'"timeout_ms":60000}}\n' for i in range(n)).encode())
            full = 0
            for _ in range(n - (16384 - 1)):  # past the cap: answered at once
                r = c.next(lambda x: "event" not in x)
                full += r["error"]["code"] == "queue_full"
            self.assertGreater(full, 0)
            self.assertTrue(c.ok("ping"))

    def test_barrier_without_answer_times_out(self):
        """A broker that grants the SUBSCRIBE but never answers PINGREQ: a client that sent
        EOF after subscribing is still closed once the barrier times out."""
        def handler(conn, fb):  # never answers PINGREQ
            fb.read_connect(conn)
            conn.sendall(b"\x20\x02\x00\x00")
            while True:
                t, body = fb.read_packet(conn)
                if t == 0x82:
                    conn.sendall(b"\x90\x03" + body[:2] + b"\x00")
        fb = self.fake_broker(handler)
        d = self.daemon(fb.port, sections={"broker": {"keepalive": "0"}})
        s = socket.socket(socket.AF_UNIX)
        s.connect(d.socket)
        s.sendall(b'{"id":1,"op":"subscribe","filter":"a/#","timeout_ms":500}\n')
        s.shutdown(socket.SHUT_WR)
        s.settimeout(WAIT)
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        s.close()
        self.assertIn(b'"ok":true', data)


if __name__ == "__main__":
    main()

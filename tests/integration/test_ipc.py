#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""The local socket protocol: every op, event and error code, routing, limits."""
import base64
import json
import os
import select
import signal
import socket
import subprocess
import time

from harness import DAEMON, WAIT, Client, TestCase, main, wait_until


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


class Ops(TestCase):
    def setUp(self):
        super().setUp()
        self.m = self.broker()
        self.d = self.daemon(self.m.port)

    def test_every_bad_request(self):
        cases = [
            (b"not json", "bad_json", None),
            (b"[1,2]", "bad_json", None),
            (b"{\"id\":1,\"op\":\"publish\",\"topic\":\"a\",\"payload\":\"\xff\"}", "bad_json", None),
            (b'{"id":1}', "bad_request", 1),
            (b'{"id":"x","op":7}', "bad_request", "x"),
            (b'{"id":[1],"op":"teleport"}', "unknown_op", [1]),
            (b'{"id":2,"op":"publish","topic":"a/#","payload":"x"}', "bad_request", 2),
            (b'{"id":2,"op":"publish","topic":"","payload":"x"}', "bad_request", 2),
            (b'{"id":2,"op":"publish","topic":"a"}', "bad_request", 2),
            (b'{"id":2,"op":"publish","topic":"a","payload":"x","qos":3}', "bad_request", 2),
            (b'{"id":2,"op":"publish","topic":"a","payload_b64":"!!"}', "bad_request", 2),
            (b'{"id":2,"op":"publish","topic":"a","payload":"x","retain":"yes"}', "bad_request", 2),
            (b'{"id":2,"op":"publish","topic":"a","payload":"x","timeout_ms":-5}', "bad_request", 2),
            (b'{"id":3,"op":"subscribe","filter":"a/#/b"}', "bad_request", 3),
            (b'{"id":3,"op":"subscribe","filter":"a","encoding":"hex"}', "bad_request", 3),
            (b'{"id":3,"op":"subscribe"}', "bad_request", 3),
            (b'{"id":4,"op":"unsubscribe","filter":"never/held"}', "not_subscribed", 4),
            (b'{"id":5,"op":"events","ping":1}', "bad_request", 5),
        ]
        with self.d.client() as c:
            for line, code, rid in cases:
                c.send_raw(line + b"\n")
                r = c.next(lambda m: "event" not in m)
                self.assertEqual((r["ok"], r["error"]["code"], r["id"]), (False, code, rid),
                                 line)
                self.assertTrue(r["error"]["message"])
            # Still usable after all of that, and CRLF and blank lines are fine.
            c.send_raw(b'\r\n\n{"id":9,"op":"ping"}\r\n')
            self.assertEqual(c.next()["id"], 9)

    def test_status_stats_ping_fields(self):
        with self.d.client() as c:
            st = c.ok("status")["status"]
            for k, t in [("connected", bool), ("state", str), ("broker", str), ("tls", bool),
                         ("client_id", str), ("session_present", bool), ("keepalive", int),
                         ("uptime_s", int), ("connected_for_s", int), ("reconnects", int),
                         ("queued", int), ("inflight", int), ("local_clients", int),
                         ("subscriptions", int), ("version", str)]:
                self.assertIsInstance(st[k], t, k)
            self.assertIsNone(st["last_error"])
            self.assertIsNone(st["next_retry_ms"])
            self.assertEqual(st["broker"], f"127.0.0.1:{self.m.port}")
            keys = ["packets_sent", "packets_received", "bytes_sent", "bytes_received",
                            "pub_ok_count", "pub_fail_count", "pub_rtt_ms",
                            "pub_package_avg_size", "sub_package_avg_size", "connections_sent",
                            "connections_failed", "ping_sent_count", "ping_received_count",
                            "ping_rtt_ms"]
            stats = c.ok("stats")["stats"]
            for k in keys:
                self.assertIsInstance(stats[k], int, k)
            self.assertEqual(stats["connections_sent"], 1)
            self.assertIn("broker_rtt_ms", c.ok("ping"))

    def test_admin_ops(self):
        with self.d.client() as c:
            c.ok("events", connection=True)
            c.ok("publish", topic="s/r", payload="x", qos=1)
            self.assertGreater(c.ok("stats")["stats"]["pub_ok_count"], 0)
            c.ok("stats_reset")
            self.assertEqual(c.ok("stats")["stats"]["pub_ok_count"], 0)
            c.ok("reconnect")
            e = c.event("disconnected")
            self.assertIsNone(e["rc"])
            e = c.event("connected")
            self.assertFalse(e["session_present"])
            self.assertEqual(c.ok("status")["status"]["reconnects"], 1)
            c.ok("reload")

    def test_admin_ops_forbidden_to_other_users(self):
        os.chmod(self.d.socket, 0o666)
        os.chmod(self.d.dir, 0o755)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: become nobody, then ask
            os.close(r)
            try:
                os.setgid(65534)
                os.setuid(65534)
                out = []
                with Client(self.d.socket) as c:
                    for op in ("reconnect", "stats_reset", "reload", "status"):
                        out.append(c.request(op))
                os.write(w, json.dumps(out).encode())
            finally:
                os._exit(0)
        os.close(w)
        data = b""
        while chunk := os.read(r, 65536):
            data += chunk
        os.close(r)
        os.waitpid(pid, 0)
        replies = json.loads(data)
        for rep in replies[:3]:
            self.assertEqual(rep["error"]["code"], "forbidden")
        self.assertTrue(replies[3]["ok"])

    def test_binary_payloads(self):
        blob = bytes(range(256)) * 4
        with self.d.client() as c:
            c.ok("subscribe", filter="bin/auto", qos=1)
            c.ok("subscribe", filter="bin/b64", qos=1, encoding="base64")
            c.ok("publish", topic="bin/auto", payload_b64=base64.b64encode(blob).decode(), qos=1)
            e = c.event("message")
            self.assertNotIn("payload", e)
            self.assertEqual(base64.b64decode(e["payload_b64"]), blob)
            c.ok("publish", topic="bin/b64", payload="plain text", qos=1)
            e = c.event("message")
            self.assertEqual(base64.b64decode(e["payload_b64"]), b"plain text")
            # Text with every escape JSON needs, and U+0000.
            text = 'quote " backslash \\ tab \t nl \n nul \u0000 é €'
            c.ok("publish", topic="bin/auto", payload=text, qos=1)
            self.assertEqual(c.event("message")["payload"], text)
        # A direct subscriber sees the exact bytes.
        direct = self.direct_sub(self.m.port, "bin/direct")
        with self.d.client() as c:
            c.ok("publish", topic="bin/direct", payload_b64=base64.b64encode(blob).decode())
        self.assertEqual(direct.next()[1], blob)

    def test_direct_clients_both_ways(self):
        with self.d.client() as c:
            c.ok("subscribe", filter="from/broker/+", qos=2)
            self.m.pub("from/broker/x", "hello", qos=2)
            e = c.event("message")
            self.assertEqual((e["topic"], e["payload"], e["qos"]), ("from/broker/x", "hello", 2))
            direct = self.direct_sub(self.m.port, "to/broker", qos=2)
            c.ok("publish", topic="to/broker", payload="hi", qos=2)
            self.assertEqual(direct.next(), ("to/broker", b"hi", False))

    def test_overlapping_filters_once(self):
        with self.d.client() as c:
            c.ok("subscribe", filter="ov/#", qos=2)
            c.ok("subscribe", filter="ov/+/x", qos=2)
            c.ok("subscribe", filter="ov/a/x", qos=2)
            c.ok("publish", topic="ov/a/x", payload="1", qos=2)
            self.assertEqual(c.event("message")["payload"], "1")
            c.ok("publish", topic="ov/a/x", payload="2", qos=2)
            self.assertEqual(c.event("message")["payload"], "2")  # not "1" again
            c.ok("ping")  # a round trip later, no duplicate is waiting
            self.assertEqual([m for m in c.events if m.get("event") == "message"], [])

    def test_qos_per_client_on_a_shared_filter(self):
        # One broker subscription at the highest QoS asked; each client gets at most its own.
        with self.d.client() as low, self.d.client() as high:
            self.assertEqual(low.ok("subscribe", filter="sq/x", qos=0)["granted_qos"], 0)
            self.assertEqual(high.ok("subscribe", filter="sq/x", qos=2)["granted_qos"], 2)
            high.ok("publish", topic="sq/x", payload="m", qos=2)
            self.assertEqual(high.event("message")["qos"], 2)
            self.assertEqual(low.event("message")["qos"], 0)
            high.ok("publish", topic="sq/x", payload="m1", qos=1)
            self.assertEqual(high.event("message")["qos"], 1)

    def test_shared_broker_subscription_refcount(self):
        with self.d.client() as a, self.d.client() as b, self.d.client() as probe:
            a.ok("subscribe", filter="rc/#", qos=1)
            b.ok("subscribe", filter="rc/#", qos=1)
            self.assertEqual(probe.ok("status")["status"]["subscriptions"], 1)
            a.ok("unsubscribe", filter="rc/#")
            probe.ok("publish", topic="rc/1", payload="x", qos=1)
            self.assertEqual(b.event("message")["payload"], "x")
            a.ok("ping")
            self.assertEqual([m for m in a.events if m.get("event") == "message"], [])
            b.ok("unsubscribe", filter="rc/#")
            self.assertEqual(probe.ok("status")["status"]["subscriptions"], 0)
            b.ok("subscribe", filter="gone/#")
        # A client that leaves takes its subscriptions with it.
        with self.d.client() as probe:
            wait_until(lambda: probe.ok("status")["status"]["subscriptions"] == 0,
                       what="the departed client's subscription to go")

    def test_pipelined_requests(self):
        with self.d.client() as c:
            c.ok("subscribe", filter="pipe/#", qos=1)
            lines = []
            for i in range(1000):
                op = [{"op": "publish", "topic": f"pipe/{i}", "payload": str(i), "qos": i % 3},
                      {"op": "ping"}, {"op": "status"}][i % 3]
                lines.append(json.dumps({"id": i, **op}))
            c.send_raw(("\n".join(lines) + "\n").encode())
            ids = set()
            while len(ids) < 1000:
                m = c.next(lambda m: "event" not in m)
                self.assertTrue(m["ok"], m)
                ids.add(m["id"])
            self.assertEqual(ids, set(range(1000)))
            got = sorted(int(e["payload"]) for e in c.messages(334))
            self.assertEqual(got, list(range(0, 1000, 3)))

    def test_too_large_line(self):
        self.d.stop()
        self.d.write_config({**self.d.cfg, "ipc": {**self.d.cfg["ipc"], "max_line": "2K"}})
        self.d.start()
        with self.d.client() as c:
            big = json.dumps({"id": 1, "op": "publish", "topic": "t", "payload": "x" * 5000})
            c.send_raw(big.encode()[:3000])  # the daemon must not wait for the end to refuse
            r = c.next()
            self.assertEqual((r["id"], r["error"]["code"]), (None, "too_large"))
            c.send_raw(big.encode()[3000:] + b"\n")
            self.assertTrue(c.ok("ping")["ok"])

    def test_max_clients(self):
        self.d.stop()
        self.d.write_config({**self.d.cfg, "ipc": {**self.d.cfg["ipc"], "max_clients": "3"}})
        self.d.start()
        held = []

        def take_slot():  # earlier connections may still be closing: retry until 3 held
            c = self.d.client()
            try:
                if c.request("ping").get("ok"):
                    held.append(c)
                    return len(held) == 3
            except (OSError, EOFError):
                pass
            c.close()
            return False
        wait_until(take_slot, what="three client slots")
        with self.d.client() as extra:
            r = extra.next()
            self.assertEqual(r["error"]["code"], "refused")
            self.assertIn("max_clients", r["error"]["message"])
            with self.assertRaises(EOFError):
                extra.next()
        held.pop().close()

        def slot_free():
            try:
                with self.d.client() as again:
                    return again.request("ping").get("ok")
            except (OSError, EOFError):
                return False
        wait_until(slot_free, what="a free slot")
        for h in held:
            h.close()

    def test_queue_full_timeout_and_offline(self):
        self.d.stop()
        self.d.write_config({**self.d.cfg, "queue": {"max_messages": "5"}})
        self.d.start()
        with self.d.client() as c:
            c.ok("events", connection=True)
            self.m.stop()
            c.event("disconnected")
            r = c.request("publish", topic="q/t", payload="late", qos=1, timeout_ms=200)
            self.assertEqual(r["error"]["code"], "timeout")
            self.assertIn("still be delivered", r["error"]["message"])
            for i in range(4):
                c.ok("publish", topic="q/t", payload=str(i), qos=1, wait=False)
            r = c.request("publish", topic="q/t", payload="over", qos=1, wait=False)
            self.assertEqual(r["error"]["code"], "queue_full")
            r = c.request("subscribe", filter="q/#", qos=1, timeout_ms=200)
            self.assertEqual(r["error"]["code"], "timeout")
            st = c.ok("stats")["stats"]
            self.assertEqual(st["pub_fail_count"], 2)  # the timeout and the refusal
            self.assertEqual(st["queued"], 5)
            self.m.start()
            c.event("connected")
            # The subscription recorded offline was restored before the queued messages.
            got = [e["payload"] for e in c.messages(5)]
            self.assertEqual(got, ["late", "0", "1", "2", "3"])

    def test_refused_subscription(self):
        m = self.broker_with_acl("topic readwrite allowed/#\n")
        d = self.daemon(m.port, name="acl")
        with d.client() as c:
            r = c.request("subscribe", filter="forbidden/#", qos=1)
            if r.get("ok"):
                self.skipTest("this mosquitto grants denied subscriptions (no 0x80)")
            self.assertEqual(r["error"]["code"], "refused")
            r = c.request("unsubscribe", filter="forbidden/#")
            self.assertEqual(r["error"]["code"], "not_subscribed")
            self.assertEqual(c.ok("subscribe", filter="allowed/#", qos=1)["granted_qos"], 1)


class Scale(TestCase):
    def test_500_clients_fan_out(self):
        m = self.broker()
        d = self.daemon(m.port)
        clients = [d.client() for _ in range(500)]
        try:
            for i, c in enumerate(clients):
                c.send({"id": 1, "op": "subscribe", "filter": "fan/#" if i % 2 else "fan/+",
                        "qos": 1})
            for c in clients:
                self.assertTrue(c.next(lambda m: m.get("id") == 1)["ok"])
            with d.client() as p:
                self.assertEqual(p.ok("status")["status"]["local_clients"], 501)
                for i in range(10):
                    p.ok("publish", topic=f"fan/{i}", payload=str(i), qos=1)
            for c in clients:
                got = sorted(int(e["payload"]) for e in c.messages(10))
                self.assertEqual(got, list(range(10)))
        finally:
            for c in clients:
                c.close()

    def test_slow_reader_is_bounded_and_told(self):
        m = self.broker()
        total = int(os.environ.get("SLOW_READER_MESSAGES", "100000"))
        d = self.daemon(m.port, sections={"ipc": {"client_buffer": "1M"},
                                          "queue": {"max_messages": str(total + 10)}})
        slow = d.client()
        slow.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.ok("subscribe", filter="flood/#", qos=0)
        fast = d.client()
        fast.ok("subscribe", filter="flood/#", qos=0)
        rss_before = rss_kib(d.proc.pid)
        with d.client() as pub:
            batch = 2000
            sent = 0
            received = 0
            while sent < total:
                n = min(batch, total - sent)
                pub.send_raw("".join(json.dumps(
                    {"id": sent + i, "op": "publish", "topic": f"flood/{(sent + i) % 7}",
                     "payload": f"{sent + i:08d}" + "p" * 40, "qos": 1, "wait": False}) + "\n"
                    for i in range(n)).encode())
                for _ in range(n):
                    self.assertTrue(pub.next(lambda m: "event" not in m)["ok"])
                sent += n
                # The fast reader keeps up while the slow one reads nothing.
                while received < sent - 2 * batch:
                    fast.event("message")
                    received += 1
            while received < total:
                fast.event("message", timeout=WAIT * 3)
                received += 1
        grown = rss_kib(d.proc.pid) - rss_before
        self.assertLess(grown, 32 * 1024, "daemon memory grew by %d KiB" % grown)
        # Now the slow reader catches up: what it got plus what it was told it missed is all.
        got = dropped = 0
        while got + dropped < total:
            e = slow.next(lambda m: m.get("event") in ("message", "dropped"), timeout=WAIT)
            if e["event"] == "message":
                got += 1
            else:
                dropped += e["count"]
        self.assertEqual(got + dropped, total)
        self.assertGreater(dropped, 0)
        self.assertLess(got, total)
        with d.client() as c:
            st = c.ok("stats")["stats"]
            self.assertEqual(st["messages_dropped"], dropped)
        slow.close()
        fast.close()

    def test_garbage_half_lines_and_hangups(self):
        m = self.broker()
        d = self.daemon(m.port)
        for i in range(200):
            with d.client() as c:
                c.send_raw([b"\x00\xff\xfe garbage", b'{"id":1,"op":"publ', b"\n\n\n{",
                            os.urandom(300)][i % 4])
        with d.client() as c:
            self.assertTrue(c.ok("ping")["ok"])
            # The hang-ups are read in the daemon's own time: this client may come first.
            wait_until(lambda: c.ok("status")["status"]["local_clients"] == 1,
                       what="every hung-up client to be let go")


class Lifecycle(TestCase):
    def test_socket_file_handling(self):
        m = self.broker()
        d = self.daemon(m.port, start=False)
        # A stale socket file (no listener) is replaced.
        s = socket.socket(socket.AF_UNIX)
        s.bind(d.socket)
        s.close()
        d.start()
        # A second daemon on the same socket refuses to start, clearly.
        r = subprocess.run([DAEMON, "-c", d.conf], capture_output=True, timeout=WAIT)
        self.assertEqual(r.returncode, 1)
        self.assertIn(b"another mqttbridged is already listening on", r.stderr)
        self.assertTrue(d.accepting())
        # Mode from the configuration; the file is removed at exit.
        self.assertEqual(os.stat(d.socket).st_mode & 0o777, 0o660)
        self.assertEqual(d.stop(), 0)
        self.assertFalse(os.path.exists(d.socket))

    def test_socket_in_new_directory_and_overrides(self):
        m = self.broker()
        sock = os.path.join(self.tmp, "a", "b", "c.sock")
        d = self.daemon(1, args=["-s", sock, "-b", f"127.0.0.1:{m.port}"], start=False)
        d.socket = sock
        d.start()
        with d.client() as c:
            self.assertEqual(c.ok("status")["status"]["broker"], f"127.0.0.1:{m.port}")

    def test_check_config(self):
        good = os.path.join(self.tmp, "good.conf")
        bad = os.path.join(self.tmp, "bad.conf")
        example = os.path.join(os.path.dirname(__file__), "../../config/mqttbridged.conf")
        with open(good, "w") as f:
            f.write("[broker]\nkeepalive = 5\n")
        with open(bad, "w") as f:
            f.write("[broker]\nkeepalive = 5\nkeepalive = soon\n")
        r = subprocess.run([DAEMON, "--check-config", "-c", good], capture_output=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        r = subprocess.run([DAEMON, "--check-config", "-c", example], capture_output=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        r = subprocess.run([DAEMON, "--check-config", "-c", bad], capture_output=True)
        self.assertEqual(r.returncode, 1)
        self.assertEqual(r.stderr.decode().strip(), f"mqttbridged: {bad}:3: keepalive must be "
                         "a whole number from 0 to 65535, not 'soon'")
        r = subprocess.run([DAEMON, "--check-config", "-c", "/nonexistent.conf"],
                           capture_output=True)
        self.assertEqual(r.returncode, 1)
        self.assertIn(b"No such file or directory", r.stderr)
        for flag in ("--help", "--version"):
            r = subprocess.run([DAEMON, flag], capture_output=True)
            self.assertEqual(r.returncode, 0)
            self.assertIn(b"mqttbridged", r.stdout)
        r = subprocess.run([DAEMON, "--bogus"], capture_output=True)
        self.assertEqual(r.returncode, 2)

    def test_reload(self):
        m1 = self.broker()
        m2 = self.broker()
        d = self.daemon(m1.port)
        with d.client() as c:
            c.ok("events", connection=True)
            # A bad file keeps the running configuration.
            with open(d.conf) as f:
                good = f.read()
            with open(d.conf, "w") as f:
                f.write(good + "[broker]\nkeepalive = never\n")
            r = c.request("reload")
            self.assertEqual(r["error"]["code"], "bad_request")
            self.assertIn(":", r["error"]["message"])
            os.kill(d.proc.pid, signal.SIGHUP)
            c.ok("ping")
            self.assertIn("keeping the running configuration", d.logtext())
            self.assertTrue(c.ok("status")["status"]["connected"])
            # A new broker address: one clean reconnect, to the new broker.
            d.write_config({**d.cfg, "broker": {**d.cfg["broker"],
                                                "host": f"127.0.0.1:{m2.port}"},
                            "log": {"level": "warning"}})
            before = len(d.logtext())
            os.kill(d.proc.pid, signal.SIGHUP)
            self.assertIsNone(c.event("disconnected")["rc"])
            c.event("connected")
            self.assertEqual(c.ok("status")["status"]["broker"], f"127.0.0.1:{m2.port}")
            # The new log level applies at once: no info or debug lines any more.
            tail = d.logtext()[before:]
            self.assertNotIn("info:", tail)
            self.assertNotIn("debug:", tail)


if __name__ == "__main__":
    main()

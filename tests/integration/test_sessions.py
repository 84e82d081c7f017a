#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Named local sessions (spec/sessions.md) with the real daemon and mosquitto: a program that
goes away misses nothing, acknowledges what it processed, and gets again what it did not."""
import os
import signal
import subprocess

from harness import MQTTCTL, WAIT, TestCase, main, wait_until
from test_acl import as_peer


def publish_many(c, topic, n, qos=1):
    """n messages, pipelined, each confirmed by the broker."""
    for i in range(n):
        c.send({"id": f"p{i}", "op": "publish", "topic": topic, "payload": f"m{i}", "qos": qos})
    for i in range(n):
        r = c.next(lambda x, i=i: x.get("id") == f"p{i}", timeout=WAIT * 3)
        assert r["ok"], r


class Sessions(TestCase):
    def setUp(self):
        super().setUp()
        self.m = self.broker()

    def start(self, **sessions):
        secs = {"ipc": {"mode": "0666"}}
        if sessions:
            secs["sessions"] = {k: str(v) for k, v in sessions.items()}
        return self.daemon(self.m.port, sections=secs)

    def test_resume_gets_everything_in_order_then_redelivery(self):
        d = self.start()
        with d.client() as w:
            self.assertEqual(w.ok("session", name="worker", expiry=60),
                             {"id": 1, "ok": True, "resumed": False, "pending": 0})
            w.ok("subscribe", filter="jobs/#", qos=1)
        with d.client() as p:
            publish_many(p, "jobs/a", 1000)
        with d.client() as w:
            r = w.ok("session", name="worker")
            self.assertEqual((r["resumed"], r["pending"]), (True, 1000))
            got = w.messages(1000)
            self.assertEqual([e["payload"] for e in got], [f"m{i}" for i in range(1000)])
            self.assertEqual([e["seq"] for e in got], list(range(1, 1001)))
            self.assertFalse(any(e.get("redelivered") for e in got))
            w.send({"op": "ack", "seq": 900})  # the last 100 read, not processed
            w.ok("ping")  # no reply to ack: the ping's says it was read
        with d.client() as w:
            r = w.ok("session", name="worker")
            self.assertEqual(r["pending"], 100)
            got = w.messages(100)
            self.assertEqual([e["seq"] for e in got], list(range(901, 1001)))
            self.assertTrue(all(e["redelivered"] for e in got))
            w.send({"op": "ack", "seq": 1000})
            with d.client() as p:
                p.ok("publish", topic="jobs/b", payload="live", qos=1)
            e = w.event("message")
            self.assertEqual((e["payload"], e["seq"]), ("live", 1001))
            self.assertNotIn("redelivered", e)
            # QoS 0 carries no seq and is not kept.
            with d.client() as p:
                p.ok("publish", topic="jobs/c", payload="q0", qos=0)
            w.ok("subscribe", filter="q0/#", qos=0)

    def test_bad_acks_and_names(self):
        d = self.start()
        with d.client() as c:
            r = c.request("ack", seq=1)
            self.assertEqual(r["error"]["code"], "bad_request")
            for name in ["", "x" * 129]:
                r = c.request("session", name=name)
                self.assertEqual(r["error"]["code"], "bad_request", name)
            c.ok("session", name="a")
            c.ok("subscribe", filter="t", qos=1)
            with d.client() as p:
                publish_many(p, "t", 3)
            c.messages(3)
            r = c.request("ack", seq=4)
            self.assertIn("never sent", r["error"]["message"])
            c.send({"op": "ack", "seq": 2})
            r = c.request("ack", seq=1)
            self.assertIn("behind the last acknowledgement", r["error"]["message"])
            r = c.request("session", name="b")
            self.assertIn("already in session a", r["error"]["message"])
        with d.client() as c:
            c.ok("subscribe", filter="x")
            r = c.request("session", name="late")
            self.assertEqual(r["error"]["code"], "bad_request")
            self.assertIn("subscribed outside a session", r["error"]["message"])

    def test_takeover_and_foreign_uid(self):
        d = self.start()
        first = d.client()
        self.cleanups.append(first.close)
        first.ok("session", name="svc")
        first.ok("subscribe", filter="svc/#", qos=1)
        with d.client() as second:
            self.assertTrue(second.ok("session", name="svc")["resumed"])
            first.event("session_taken_over")
            with self.assertRaises(EOFError):
                first.next(timeout=WAIT)
            with d.client() as p:
                p.ok("publish", topic="svc/x", payload="to the new one", qos=1)
            self.assertEqual(second.event("message")["payload"], "to the new one")
            out = as_peer(d.socket, 65534, 65534, [], [("session", {"name": "svc"}),
                                                      ("session_end", {"name": "svc"})])
            self.assertEqual(out[0]["error"]["code"], "forbidden")
            self.assertEqual(out[1]["error"]["code"], "forbidden")

    def test_sessions_per_uid(self):
        d = self.start(max_per_uid=2)
        for name in ("a", "b"):
            with d.client() as c:
                c.ok("session", name=name)
        with d.client() as c:
            r = c.request("session", name="c")
            self.assertEqual(r["error"]["code"], "forbidden")
            self.assertIn("max_per_uid", r["error"]["message"])
        with d.client() as c:
            self.assertTrue(c.ok("session", name="a")["resumed"])  # its own: still fine

    def test_bounds_drop_the_oldest_and_say_so(self):
        d = self.start(max_messages=10)
        with d.client() as w:
            w.ok("session", name="small")
            w.ok("subscribe", filter="b/#", qos=1)
        with d.client() as p:
            publish_many(p, "b/x", 25)
        with d.client() as w:
            self.assertEqual(w.ok("session", name="small")["pending"], 10)
            self.assertEqual(w.event("dropped")["count"], 15)
            got = w.messages(10)
            self.assertEqual([e["seq"] for e in got], list(range(16, 26)))
            self.assertEqual(got[0]["payload"], "m15")
            w.send({"op": "ack", "seq": 3})  # dropped ones: acknowledging them is no error
            w.ok("ping")
            self.assertEqual([x for x in w.events if "error" in x], [])
        # A lowered bound applies at the reload, not at the session's next message.
        with d.client() as w:
            w.ok("session", name="small2")
            w.ok("subscribe", filter="b2/#", qos=1)
        with d.client() as p:
            publish_many(p, "b2/x", 8)
        with open(d.conf, "a") as f:
            f.write("\n[sessions]\nmax_messages = 3\n")
        with d.client() as a:
            a.ok("reload")
            pending = {s["name"]: s["pending"] for s in a.ok("sessions")["sessions"]}
            self.assertEqual(pending["small2"], 3)

    def test_a_reader_that_lags_gets_everything_as_it_drains(self):
        """Kept messages go as far as [ipc] client_buffer allows, the rest as it reads."""
        d = self.daemon(self.m.port, sections={"ipc": {"client_buffer": "4096"}})
        with d.client() as w:
            w.ok("session", name="slow")
            w.ok("subscribe", filter="s/#", qos=1)
        with d.client() as p:
            for i in range(200):
                p.send({"id": i, "op": "publish", "topic": "s/x", "payload": f"{i:04d}" + "x" * 1000,
                        "qos": 1})
            for i in range(200):
                self.assertTrue(p.next(lambda x, i=i: x.get("id") == i)["ok"])
        with d.client() as w:
            self.assertEqual(w.ok("session", name="slow")["pending"], 200)
            got = w.messages(200)
            self.assertEqual([e["seq"] for e in got], list(range(1, 201)))

    def test_expiry_zero_and_rules_changed_while_away(self):
        d = self.daemon(self.m.port, sections={"acl": {"allow all": "pubsub room/#"}})
        with d.client() as w:
            w.ok("session", name="gone", expiry=0)
            w.ok("subscribe", filter="room/#", qos=1)
        with d.client() as a:
            wait_until(lambda: a.ok("sessions")["sessions"] == [], what="the session to end")
        with d.client() as w:
            w.ok("session", name="strict")
            w.ok("subscribe", filter="room/#", qos=1)
        with d.client() as p:
            p.ok("publish", topic="room/secret", payload="s", qos=1)
        with open(d.conf, "a") as f:
            f.write("\n[acl]\ndeny all = subscribe room/#\n")
        with d.client() as a:
            a.ok("reload")
        with d.client() as w:
            w.ok("session", name="strict")
            self.assertEqual(w.event("unsubscribed")["filter"], "room/#")
            w.ok("ping")
            self.assertEqual([x for x in w.events if x.get("event") == "message"], [])

    def test_expiry_ends_the_session_and_its_broker_subscription(self):
        d = self.start()
        with d.client() as w:
            w.ok("session", name="short", expiry=1)
            w.ok("subscribe", filter="e/#", qos=1)
        with d.client() as a:
            self.assertEqual(a.ok("status")["status"]["subscriptions"], 1)
            self.assertEqual([s["name"] for s in a.ok("sessions")["sessions"]], ["short"])
            wait_until(lambda: a.ok("sessions")["sessions"] == [], what="the session to expire")
            self.assertEqual(a.ok("status")["status"]["subscriptions"], 0)
        self.assertIn("session short (uid 0) ends: its expiry passed", d.logtext())

    def test_many_sessions_resume_at_once(self):
        d = self.start(max_per_uid=0)  # all of one uid here
        clients = [d.client() for _ in range(200)]
        try:
            for i, c in enumerate(clients):
                c.send({"id": 1, "op": "session", "name": f"s{i}"})
                c.send({"id": 2, "op": "subscribe", "filter": "all", "qos": 1})
            for c in clients:
                c.next(lambda x: x.get("id") == 2)
        finally:
            for c in clients:
                c.close()
        with d.client() as p:
            publish_many(p, "all", 5)
        clients = [d.client() for _ in range(200)]
        try:
            for i, c in enumerate(clients):
                c.send({"id": 1, "op": "session", "name": f"s{i}"})
            for c in clients:
                self.assertEqual(c.next(lambda x: x.get("id") == 1)["pending"], 5)
                self.assertEqual([e["seq"] for e in c.messages(5)], [1, 2, 3, 4, 5])
        finally:
            for c in clients:
                c.close()

    def test_takeover_keeps_the_expiry(self):
        d = self.start()
        first = d.client()
        self.cleanups.append(first.close)
        first.ok("session", name="brief", expiry=1)
        with d.client() as second:
            second.ok("session", name="brief")  # no expiry: the session's own stays
            first.event("session_taken_over")
        with d.client() as a:
            wait_until(lambda: a.ok("sessions")["sessions"] == [], what="the session to expire")

    def test_a_session_holds_at_most_1_mib_of_filters(self):
        d = self.start()
        with d.client() as w:
            w.ok("session", name="wide")
            n = (1 << 20) // 1008 + 5
            for i in range(n):
                w.send({"id": i, "op": "subscribe", "filter": f"{i:06d}/" + "f" * 993, "qos": 0})
            replies = [w.next(lambda x, i=i: x.get("id") == i) for i in range(n)]
            refused = [r for r in replies if not r["ok"]]
            self.assertEqual(len(refused), n - (1 << 20) // 1008)
            self.assertEqual(refused[0]["error"]["code"], "bad_request")
            self.assertIn("at most 1048576", refused[0]["error"]["message"])
            w.ok("unsubscribe", filter="000000/" + "f" * 993)
            w.ok("subscribe", filter="again/" + "f" * 994)  # room again

    def test_mqttctl(self):
        d = self.start()
        env = dict(os.environ, MQTTBRIDGE_SOCKET=d.socket)

        def sub():
            r = subprocess.run([MQTTCTL, "sub", "--session", "cli", "-t", "c/#", "-q", "1",
                                "-C", "10", "-W", str(int(WAIT))], capture_output=True, env=env,
                               timeout=WAIT * 2)
            self.assertEqual(r.returncode, 0, r.stderr)
            return r.stdout.decode().splitlines()
        with d.client() as w:  # the session and its subscription, made once
            w.ok("session", name="cli")
            w.ok("subscribe", filter="c/#", qos=1)
        with d.client() as p:
            publish_many(p, "c/x", 25)
        first, second = sub(), sub()
        self.assertEqual(first + second, [f"m{i}" for i in range(20)])
        r = subprocess.run([MQTTCTL, "sessions"], capture_output=True, env=env, timeout=WAIT)
        lines = r.stdout.decode().splitlines()
        self.assertEqual(lines[0].split()[:3], ["NAME", "UID", "CONNECTED"])
        self.assertEqual(lines[1].split()[:5], ["cli", "0", "no", "1", "5"])

    def test_worker_examples(self):
        d = self.start()
        env = dict(os.environ, MQTTBRIDGE_SOCKET=d.socket, MQTTCTL=MQTTCTL)
        examples = os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../clients/examples")

        def run(*args):
            r = subprocess.run(args, capture_output=True, env=env, timeout=WAIT * 2)
            self.assertEqual(r.returncode, 0, r.stderr)
            return r.stdout.decode().splitlines()
        with d.client() as w:  # the jobs' session exists before they come
            w.ok("session", name="jobs")
            w.ok("subscribe", filter="job/#", qos=1)
        with d.client() as p:
            publish_many(p, "job/x", 6)
        self.assertEqual(run("/usr/bin/python3", os.path.join(examples, "worker.py"), "jobs",
                             "job/#", "3"), ["1 m0", "2 m1", "3 m2"])
        self.assertEqual(run("sh", os.path.join(examples, "worker.sh"), "jobs", "job/#", "3"),
                         ["done: m3", "done: m4", "done: m5"])


class SessionsInTheSpool(TestCase):
    """With [queue] spool_dir: sessions, their subscriptions, kept messages and acknowledgements
    survive a restart and kill -9."""

    def setUp(self):
        super().setUp()
        self.m = self.broker()

    def start(self, persistent=False, **sessions):
        secs = {"ipc": {"mode": "0666"},
                "queue": {"spool_dir": os.path.join(self.tmp, "spool"), "fsync": "batch"}}
        if persistent:  # the broker keeps what comes for the daemon while it is down
            secs["broker"] = {"clean_session": "false", "client_id": "sessions-spool"}
        if sessions:
            secs["sessions"] = {k: str(v) for k, v in sessions.items()}
        return self.daemon(self.m.port, sections=secs)

    def pending(self, d, n, name):
        with d.client() as a:
            wait_until(lambda: [(s["name"], s["pending"]) for s in a.ok("sessions")["sessions"]]
                       == [(name, n)], what=f"{n} messages kept for {name}")

    def test_kill_9_loses_nothing_and_redelivers_what_was_not_acknowledged(self):
        d = self.start()
        with d.client() as w:
            w.ok("session", name="worker", expiry=600)
            w.ok("subscribe", filter="jobs/#", qos=1)
        with d.client() as p:
            publish_many(p, "jobs/a", 1000)
        self.pending(d, 1000, "worker")
        d.stop(signal.SIGKILL)
        d.start()
        self.assertIn("1 sessions recovered, holding 1000 messages", d.logtext())
        with d.client() as w:
            r = w.ok("session", name="worker")
            self.assertEqual((r["resumed"], r["pending"]), (True, 1000))
            got = w.messages(1000)
            self.assertEqual([e["payload"] for e in got], [f"m{i}" for i in range(1000)])
            self.assertEqual([e["seq"] for e in got], list(range(1, 1001)))
            # Whether the program had them before the kill, the daemon cannot know.
            self.assertTrue(all(e["redelivered"] for e in got))
            w.send({"op": "ack", "seq": 900})  # the last 100 read, not processed
            w.ok("ping")
        d.stop(signal.SIGKILL)
        d.start()
        with d.client() as w:
            r = w.ok("session", name="worker")
            self.assertEqual(r["pending"], 100)
            got = w.messages(100)
            self.assertEqual([e["seq"] for e in got], list(range(901, 1001)))
            self.assertEqual(got[0]["payload"], "m900")
            self.assertTrue(all(e["redelivered"] for e in got))
            r = w.request("ack", seq=899)
            self.assertIn("behind the last acknowledgement (900)", r["error"]["message"])
            w.send({"op": "ack", "seq": 1000})
            # The subscription came back with it: a new message, numbered on.
            with d.client() as p:
                p.ok("publish", topic="jobs/b", payload="live", qos=1)
            e = w.event("message")
            self.assertEqual((e["payload"], e["seq"]), ("live", 1001))
            self.assertNotIn("redelivered", e)
            w.send({"op": "ack", "seq": 1001})
            w.ok("ping")
        self.assertEqual(d.stop(), 0)  # a clean stop keeps it too
        d.start()
        with d.client() as w:
            self.assertEqual(w.ok("session", name="worker")["pending"], 0)
            w.ok("session_end", name="worker")
        d.stop(signal.SIGKILL)
        d.start()
        with d.client() as a:
            self.assertEqual(a.ok("sessions")["sessions"], [])
            self.assertEqual(a.ok("status")["status"]["subscriptions"], 0)

    def test_many_subscriptions_come_back(self):
        d = self.start()

        def subscribe_all(w, n, prefix):
            for i in range(n):
                w.send({"id": f"s{i}", "op": "subscribe", "filter": f"{prefix}/{i}", "qos": 1})
            for i in range(n):
                self.assertTrue(w.next(lambda x, i=i: x.get("id") == f"s{i}")["ok"])
        with d.client() as w:  # a short list: written before the loop next waits
            w.ok("session", name="short")
            subscribe_all(w, 300, "s")
        d.stop(signal.SIGKILL)
        d.start()
        with d.client() as a:
            self.assertEqual(a.ok("status")["status"]["subscriptions"], 300)
        with d.client() as w:  # a long one (over 64 KiB): at most once a second, and at stop
            w.ok("session", name="long")
            subscribe_all(w, 1500, "a-filter-long-enough-to-make-the-list-long/" + "x" * 20)
        self.assertEqual(d.stop(), 0)
        d.start()
        with d.client() as a:
            self.assertEqual(a.ok("status")["status"]["subscriptions"], 1800)
            self.assertEqual(sorted((s["name"], s["subscriptions"])
                                    for s in a.ok("sessions")["sessions"]),
                             [("long", 1500), ("short", 300)])

    def test_what_the_broker_kept_while_the_daemon_was_down_arrives(self):
        """With a persistent broker session the broker queues the session's messages while the
        daemon is down; with MQTT 5 they name the subscription identifier of the previous run,
        which the recovered subscription keeps."""
        d = self.start(persistent=True)
        with d.client() as w:
            w.ok("session", name="down", expiry=600)
            w.ok("subscribe", filter="kept/#", qos=1)
        self.assertEqual(d.stop(), 0)
        p = self.daemon(self.m.port, name="p")
        with p.client() as c:
            publish_many(c, "kept/x", 5)
        d.start()
        self.pending(d, 5, "down")
        with d.client() as w:
            self.assertEqual(w.ok("session", name="down")["pending"], 5)
            self.assertEqual([e["payload"] for e in w.messages(5)], [f"m{i}" for i in range(5)])

    def test_acknowledged_stays_acknowledged_across_segments(self):
        """1000 messages of 5 KB (two segments), all acknowledged, the session written again
        when its program leaves: after kill -9 nothing is pending, nothing said dropped, and
        numbering goes on."""
        d = self.start()
        with d.client() as w:
            w.ok("session", name="acks")
            w.ok("subscribe", filter="a/#", qos=1)
            with d.client() as p:
                for i in range(1000):
                    p.send({"id": i, "op": "publish", "topic": "a/x", "payload": "x" * 5000,
                            "qos": 1, "wait": False})
                for i in range(1000):
                    p.next(lambda x, i=i: x.get("id") == i)
            got = w.messages(1000)
            self.assertEqual(got[-1]["seq"], 1000)
            w.send({"op": "ack", "seq": 1000})
            w.ok("ping")
        d.stop(signal.SIGKILL)
        d.start()
        with d.client() as w:
            self.assertEqual(w.ok("session", name="acks")["pending"], 0)
            w.ok("ping")
            self.assertEqual([e for e in w.events if e.get("event") == "dropped"], [])
            with d.client() as p:
                p.ok("publish", topic="a/y", payload="next", qos=1)
            self.assertEqual(w.event("message")["seq"], 1001)

    def test_a_drop_that_leaves_no_gap_is_remembered(self):
        d = self.start(max_bytes=1024)
        with d.client() as w:
            w.ok("session", name="big")
            w.ok("subscribe", filter="b/#", qos=1)
        with d.client() as p:
            p.ok("publish", topic="b/x", payload="x" * 2000, qos=1)  # over max_bytes
        with d.client() as a:
            wait_until(lambda: a.ok("sessions")["sessions"][0]["dropped"] == 1,
                       what="the drop to be counted")
            a.ok("ping")  # the loop has waited since: the session is written
        d.stop(signal.SIGKILL)
        d.start()
        with d.client() as w:
            self.assertEqual(w.ok("session", name="big")["pending"], 0)
            self.assertEqual(w.event("dropped")["count"], 1)

    def test_expiry_counts_from_when_the_program_left(self):
        d = self.start()
        with d.client() as w:
            w.ok("session", name="brief", expiry=3)
            w.ok("subscribe", filter="b/#", qos=1)
        d.stop(signal.SIGKILL)
        d.start()
        with d.client() as a:
            self.assertEqual(a.ok("status")["status"]["subscriptions"], 1)
            self.assertEqual([s["name"] for s in a.ok("sessions")["sessions"]], ["brief"])
            wait_until(lambda: a.ok("sessions")["sessions"] == [], timeout=10,
                       what="the session to expire")
            self.assertEqual(a.ok("status")["status"]["subscriptions"], 0)
        d.stop(signal.SIGKILL)
        d.start()
        with d.client() as a:
            self.assertEqual(a.ok("sessions")["sessions"], [])

    def test_bounds_and_dropped_count_survive(self):
        d = self.start(max_messages=10)
        with d.client() as w:
            w.ok("session", name="small")
            w.ok("subscribe", filter="s/#", qos=1)
        with d.client() as p:
            publish_many(p, "s/x", 25)
        self.pending(d, 10, "small")
        d.stop(signal.SIGKILL)
        d.start()
        with d.client() as w:
            self.assertEqual(w.ok("session", name="small")["pending"], 10)
            self.assertEqual(w.event("dropped")["count"], 15)
            got = w.messages(10)
            self.assertEqual([e["seq"] for e in got], list(range(16, 26)))
            self.assertEqual([e["payload"] for e in got], [f"m{i}" for i in range(15, 25)])


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""MQTT 5 for local programs, against a real mosquitto 2: message properties through the
JSON protocol, subscription options, Message Expiry in the daemon's queue and spool,
request/response, the broker's reason codes in replies, and what a 3.1.1 link refuses."""
import base64
import os
import subprocess
import threading
import time

from harness import WAIT, Background, TestCase, main, wait_until
from test_mqtt5 import packet

V5 = {"broker": {"protocol": "5"}}


def sections(**extra):
    out = {k: dict(v) for k, v in V5.items()}
    for k, v in extra.items():
        out.setdefault(k, {}).update(v)
    return out


class Properties(TestCase):
    def test_round_trip_exactly(self):
        m = self.broker()
        d = self.daemon(m.port, sections=V5)
        with d.client() as sub, d.client() as pub:
            sub.ok("subscribe", filter="p/#", qos=1)
            users = [["k", "1"], ["k", "2"], ["z", ""], ["é", "ü"], ["k", "1"]]
            corr = bytes([0, 255, 10, 13, 34])
            pub.ok("publish", topic="p/a", payload="{}", qos=1, user_properties=users,
                   content_type="application/json", payload_format=1, response_topic="p/reply",
                   correlation_data_b64=base64.b64encode(corr).decode(), message_expiry=3600)
            e = sub.event("message")
            self.assertEqual(e["user_properties"], users)  # order and repeats kept
            self.assertEqual(e["content_type"], "application/json")
            self.assertEqual(e["payload_format"], 1)
            self.assertEqual(e["response_topic"], "p/reply")
            self.assertEqual(base64.b64decode(e["correlation_data_b64"]), corr)
            self.assertLessEqual(e["message_expiry"], 3600)
            self.assertGreater(e["message_expiry"], 3590)
            # A message without properties has none of those fields.
            pub.ok("publish", topic="p/b", payload="plain")
            e = sub.event("message")
            self.assertEqual(set(e), {"event", "topic", "payload", "qos", "retain"})

    def test_external_client_sees_them(self):
        m = self.broker()
        d = self.daemon(m.port, sections=V5)
        out = Background(["mosquitto_sub", "-p", str(m.port), "-h", "127.0.0.1", "-V", "5",
                          "-t", "x/#", "-C", "1", "-W", str(int(WAIT)),
                          "-F", "%t|%p|%P|%C|%R|%D"])
        # mosquitto_sub has no ready signal: publish until it has printed one and exited.
        with d.client() as pub:
            deadline = time.monotonic() + WAIT
            while out.proc.poll() is None and time.monotonic() < deadline:
                pub.ok("publish", topic="x/1", payload="hi", user_properties=[["a", "b"]],
                       content_type="text/plain", response_topic="x/r", correlation_data="c1")
                time.sleep(0.1)
        self.assertEqual(out.result()[0], "x/1|hi|a:b|text/plain|x/r|c1")

    def test_bad_fields_are_named(self):
        m = self.broker()
        d = self.daemon(m.port, sections=V5)
        with d.client() as c:
            for fields, text in [
                ({"user_properties": [["a"]]}, "user_properties[0] must be a pair"),
                ({"message_expiry": -1}, "message_expiry must be an integer"),
                ({"response_topic": "a/+"}, "response_topic must not contain wildcards"),
                ({"payload_format": 7}, "payload_format must be 0 or 1"),
            ]:
                r = c.request("publish", topic="t", payload="x", **fields)
                self.assertEqual(r["error"]["code"], "bad_request", r)
                self.assertIn(text, r["error"]["message"])
            c.ok("publish", topic="t", payload="still usable")


class SubscriptionOptions(TestCase):
    def test_no_local(self):
        m = self.broker()
        d = self.daemon(m.port, sections=V5)
        with d.client() as a, d.client() as b, d.client() as pub:
            a.ok("subscribe", filter="nl/x", qos=1, no_local=True)
            b.ok("subscribe", filter="nl/#", qos=1)
            pub.ok("publish", topic="nl/x", payload="ours", qos=1)
            self.assertEqual(b.event("message")["payload"], "ours")
            m.pub("nl/x", "theirs", qos=1)
            self.assertEqual(b.event("message")["payload"], "theirs")
            self.assertEqual(a.event("message")["payload"], "theirs")  # only that one
            # Another holder of the same filter must agree on the options.
            r = b.request("subscribe", filter="nl/x", qos=1)
            self.assertEqual(r["error"]["code"], "bad_request")
            self.assertIn("no_local true", r["error"]["message"])

    def test_retain_as_published_and_handling(self):
        m = self.broker()
        m.pub("rh/t", "kept", qos=1, retain=True)
        d = self.daemon(m.port, sections=V5)
        with d.client() as a, d.client() as b, d.client() as c:
            a.ok("subscribe", filter="rh/#", qos=1, retain_as_published=True)
            e = a.event("message")
            self.assertEqual((e["payload"], e["retain"]), ("kept", True))
            b.ok("subscribe", filter="rh/#", qos=1, retain_as_published=True, retain_handling=2)
            c.ok("subscribe", filter="rh/#", qos=1, retain_as_published=True, retain_handling=1)
            self.assertEqual(c.event("message")["payload"], "kept")  # new for c
            c.ok("subscribe", filter="rh/#", qos=1, retain_as_published=True, retain_handling=1)
            m.pub("rh/t", "live", qos=1, retain=True)
            for cl in (a, b, c):
                e = cl.event("message")
                # Retain As Published: the flag as the publisher set it.
                self.assertEqual((e["payload"], e["retain"]), ("live", True))
            for cl in (b, c):  # b never, c not again: nothing else came
                cl.ok("ping")
                self.assertEqual([x for x in cl.events if x.get("event") == "message"], [])

    def test_retained_not_again_after_a_reconnect(self):
        """A new broker session: the daemon restores its subscriptions without asking for the
        retained messages, which Retain As Published would make look live."""
        m = self.broker(persistence=True)
        m.pub("rr/t", "kept", qos=1, retain=True)
        d = self.daemon(m.port, sections=sections(broker={"reconnect_min": "1"}))
        with d.client() as a:
            a.ok("subscribe", filter="rr/#", qos=1, retain_as_published=True)
            self.assertEqual(a.event("message")["payload"], "kept")
            m.stop()
            m.start()
            wait_until(lambda: a.ok("status")["status"]["reconnects"] >= 1, what="reconnect")
            wait_until(lambda: a.ok("status")["status"]["connected"], what="connected")
            # The restore's SUBACK is in before this publish's copy can come back.
            a.ok("publish", topic="rr/live", payload="after", qos=1)
            self.assertEqual(a.event("message")["payload"], "after")


class Expiry(TestCase):
    def test_expires_in_the_queue_while_the_broker_is_down(self):
        m = self.broker()
        d = self.daemon(m.port, sections=sections(broker={"reconnect_min": "1",
                                                          "reconnect_max": "1"}))
        with d.client() as c:
            c.ok("subscribe", filter="ex/#", qos=1)
            m.stop()
            wait_until(lambda: not c.ok("status")["status"]["connected"], what="link down")
            c.send({"id": "short", "op": "publish", "topic": "ex/short", "payload": "s",
                    "qos": 1, "message_expiry": 1})
            c.send({"id": "long", "op": "publish", "topic": "ex/long", "payload": "l",
                    "qos": 1, "message_expiry": 600})
            r = c.next(lambda x: x.get("id") == "short", timeout=WAIT)
            self.assertEqual(r["error"]["code"], "timeout")
            self.assertIn("expired", r["error"]["message"])
            time.sleep(1.2)  # the long one waits longer than a second in the queue
            m.start()
            self.assertTrue(c.next(lambda x: x.get("id") == "long")["ok"])
            e = c.event("message")
            self.assertEqual(e["topic"], "ex/long")  # the short one never went out
            self.assertLess(e["message_expiry"], 600)
            self.assertGreaterEqual(e["message_expiry"], 590)
            st = c.ok("stats")["stats"]
            self.assertEqual(st["messages_expired"], 1)

    def test_expires_across_a_restart_with_a_spool(self):
        m = self.broker()
        spool = os.path.join(self.tmp, "spool")
        cfg = sections(queue={"spool_dir": spool})
        d = self.daemon(m.port, sections=cfg)
        m.stop()
        with d.client() as c:
            wait_until(lambda: not c.ok("status")["status"]["connected"], what="link down")
            c.ok("publish", topic="sp/short", payload="s", qos=1, wait=False, message_expiry=1)
            c.ok("publish", topic="sp/long", payload="l", qos=1, wait=False,
                 message_expiry=600, user_properties=[["kept", "yes"]])
        self.assertEqual(d.stop(), 0)
        time.sleep(1.1)  # the short one expires while the daemon is down
        m.start()
        sub = self.direct_sub(m.port, "sp/#")
        d2 = self.daemon(m.port, sections=cfg, name="d2")
        topic, payload, _ = sub.next()
        self.assertEqual((topic, payload), ("sp/long", b"l"))
        with d2.client() as c:
            self.assertEqual(c.ok("stats")["stats"]["messages_expired"], 1)
        self.assertIn("expired while the daemon was down", d2.logtext())
        with self.assertRaises(TimeoutError):
            sub.next(timeout=0.5)


class Requests(TestCase):
    def responder(self, d, filter="svc/echo"):
        """A local program serving requests: answers each with its payload reversed."""
        c = d.client()
        self.cleanups.append(c.close)
        c.ok("subscribe", filter=filter, qos=1)
        stop = threading.Event()

        def serve():
            while not stop.is_set():
                try:
                    e = c.event("message", timeout=0.2)
                except AssertionError:
                    continue
                except (EOFError, OSError):
                    return
                c.send({"op": "publish", "topic": e["response_topic"], "payload": e["payload"][::-1],
                        "correlation_data": e["correlation_data"], "qos": 1,
                        "user_properties": [["served-by", "local"]]})
        t = threading.Thread(target=serve, daemon=True)
        t.start()
        self.cleanups.append(lambda: (stop.set(), t.join(WAIT)))
        return c

    def test_request_with_a_local_responder(self):
        m = self.broker()
        d = self.daemon(m.port, sections=V5)
        self.responder(d)
        with d.client() as c:
            r = c.ok("request", topic="svc/echo", payload="hello", qos=1,
                     user_properties=[["trace", "1"]])["response"]
            self.assertEqual(r["payload"], "olleh")
            self.assertEqual(r["user_properties"], [["served-by", "local"]])
            self.assertTrue(r["topic"].startswith("mqttbridge/"))
            self.assertRegex(r["correlation_data"], "^[0-9a-f]{32}$")  # 128 random bits
            r = c.request("request", topic="svc/echo", payload="x", retain=True)
            self.assertEqual(r["error"]["code"], "bad_request")
            self.assertIn("cannot be retained", r["error"]["message"])

    def test_many_concurrent_requests(self):
        m = self.broker()
        d = self.daemon(m.port, sections=V5)
        self.responder(d)
        clients = [d.client() for _ in range(4)]
        try:
            for i in range(200):
                clients[i % 4].send({"id": i, "op": "request", "topic": "svc/echo",
                                     "payload": f"n{i}", "qos": i % 2})
            for i in range(200):
                r = clients[i % 4].next(lambda x, i=i: x.get("id") == i, timeout=WAIT * 2)
                self.assertTrue(r["ok"], r)
                self.assertEqual(r["response"]["payload"], f"n{i}"[::-1])
        finally:
            for cl in clients:
                cl.close()

    def test_external_responder_and_timeout(self):
        m = self.broker()
        d = self.daemon(m.port, sections=sections(rpc={"response_prefix": "rr/replies"}))
        # The external responder: mosquitto_sub prints each request's response topic and
        # correlation data, mosquitto_pub -D answers. Probes tell when it is subscribed.
        sub = subprocess.Popen(["mosquitto_sub", "-p", str(m.port), "-h", "127.0.0.1", "-V", "5",
                                "-t", "ext/#", "-W", str(int(WAIT)), "-F", "%t|%R|%D|%p"],
                               stdout=subprocess.PIPE, text=True)
        self.cleanups.append(sub.kill)
        lines = []
        reader = threading.Thread(target=lambda: lines.extend(sub.stdout), daemon=True)
        reader.start()
        with d.client() as c:
            wait_until(lambda: m.pub("ext/probe", "p") or lines, what="mosquitto_sub ready",
                       interval=0.05)
            c.send({"id": "q", "op": "request", "topic": "ext/svc", "payload": "ping",
                    "qos": 1, "timeout_ms": 8000})
            wait_until(lambda: any(x.startswith("ext/svc|") for x in lines), what="the request")
            line = next(x for x in lines if x.startswith("ext/svc|"))
            _, rtopic, corr, payload = line.strip().split("|")
            self.assertEqual((rtopic, payload), ("rr/replies", "ping"))
            subprocess.run(["mosquitto_pub", "-p", str(m.port), "-h", "127.0.0.1", "-V", "5",
                            "-t", rtopic, "-m", "pong", "-D", "publish", "correlation-data",
                            corr], check=True, timeout=WAIT)
            r = c.next(lambda x: x.get("id") == "q")
            self.assertEqual(r["response"]["payload"], "pong")
            # A response nobody waits for is counted; a request nobody answers times out.
            subprocess.run(["mosquitto_pub", "-p", str(m.port), "-h", "127.0.0.1", "-V", "5",
                            "-t", rtopic, "-m", "late", "-D", "publish", "correlation-data",
                            "nobody"], check=True, timeout=WAIT)
            wait_until(lambda: c.ok("stats")["stats"]["responses_unmatched"] == 1,
                       what="the unmatched response counted")
            c.ok("stats_reset")
            self.assertEqual(c.ok("stats")["stats"]["responses_unmatched"], 0)
            c.ok("subscribe", filter="ext/silent", qos=0)  # someone is subscribed
            r = c.request("request", topic="ext/silent", payload="x", qos=1, timeout_ms=300)
            self.assertEqual(r["error"]["code"], "timeout")

    def test_mosquitto_rr_against_a_local_responder(self):
        m = self.broker()
        d = self.daemon(m.port, sections=V5)
        self.responder(d, "svc/rr")
        # mosquitto_rr subscribes to its response topic, then publishes the request.
        r = subprocess.run(["mosquitto_rr", "-p", str(m.port), "-h", "127.0.0.1", "-t", "svc/rr",
                            "-e", "rr/back", "-m", "abc", "-W", str(int(WAIT)), "-q", "1",
                            "-D", "publish", "correlation-data", "k"],
                           capture_output=True, timeout=WAIT + 5)
        self.assertEqual(r.stdout.decode().strip(), "cba", r.stderr)

    def test_publish_success_says_no_matching_subscribers(self):
        """A QoS 1 publish nobody subscribed to succeeds with the broker's 0x10, and one that
        has a subscriber with none, each reply exactly as docs/protocol.md shows it."""
        m = self.broker()
        d = self.daemon(m.port, sections=V5)
        with d.client() as c:
            c.send_raw(b'{"id":-7,"op":"publish","topic":"nobody/here","payload":"x","qos":1}\n')
            self.assertEqual(c.next(lambda x: "event" not in x),
                             {"id": -7, "ok": True, "reason_code": 16})
            c.ok("subscribe", filter="somebody/here", qos=1)
            r = c.ok("publish", topic="somebody/here", payload="x", qos=1)
            self.assertNotIn("reason_code", r)

    def test_no_subscriber_fails_fast(self):
        m = self.broker()
        d = self.daemon(m.port, sections=V5)
        with d.client() as c:
            r = c.request("request", topic="nobody/home", payload="x", qos=1)
            self.assertEqual(r["error"]["code"], "refused")
            self.assertEqual(r["error"]["reason_code"], 16)


class RefusedResponses(TestCase):
    def test_broker_refuses_the_response_subscription(self):
        """A scripted MQTT 5 broker (mosquitto's ACLs refuse a SUBSCRIBE with a SUBACK the
        session takes for a restore's): SUBACK 0x87 for every SUBSCRIBE."""
        subscribes = []

        def handler(conn, fb):
            fb.read_connect(conn)
            conn.sendall(packet(0x20, b"\x00\x00\x00"))
            while True:
                first, body = fb.read_packet(conn)
                if first >> 4 == 8:
                    subscribes.append(body)
                    conn.sendall(packet(0x90, body[:2] + b"\x00\x87"))
                elif first >> 4 == 12:
                    conn.sendall(b"\xd0\x00")
        fb = self.fake_broker(handler)
        d = self.daemon(fb.port, sections=V5)
        with d.client() as c:
            for i in range(2):
                r = c.request("request", topic="svc/x", payload="x", timeout_ms=5000)
                self.assertEqual(r["error"]["code"], "refused", r)
                self.assertEqual(r["error"]["reason_code"], 0x87)
                self.assertIn("subscription to the responses", r["error"]["message"])
            self.assertEqual(len(subscribes), 2)  # the next request asked again
        self.assertIn("refused the subscription to the responses", d.logtext())


class ReasonCodes(TestCase):
    def test_refused_publish_and_no_subscribers(self):
        m = self.broker_with_acl("topic readwrite ok/#\n")
        d = self.daemon(m.port, sections=V5)
        with d.client() as c:
            r = c.request("publish", topic="denied/x", payload="x", qos=1)
            self.assertEqual(r["error"]["code"], "refused", r)
            self.assertEqual(r["error"]["reason_code"], 0x87)
            r = c.ok("publish", topic="ok/nobody", payload="x", qos=1)
            self.assertEqual(r["reason_code"], 16)


class Protocol311(TestCase):
    def test_v5_fields_are_refused(self):
        m = self.broker()
        d = self.daemon(m.port, sections={"broker": {"protocol": "3.1.1"}})
        with d.client() as c:
            for op, fields, name in [
                ("publish", {"topic": "t", "payload": "x", "content_type": "a"}, "content_type"),
                ("publish", {"topic": "t", "payload": "x", "user_properties": [["a", "b"]]},
                 "user_properties"),
                ("publish", {"topic": "t", "payload": "x", "message_expiry": 5},
                 "message_expiry"),
                ("subscribe", {"filter": "t", "no_local": True}, "no_local"),
                ("request", {"topic": "t", "payload": "x"}, "request"),
            ]:
                r = c.request(op, **fields)
                self.assertEqual(r["error"]["code"], "bad_request", r)
                self.assertIn(f"{name} needs MQTT 5", r["error"]["message"])
                self.assertIn("[broker] protocol = 3.1.1", r["error"]["message"])
            c.ok("publish", topic="t", payload="plain", user_properties=[])

    def test_auto_before_the_first_connack_then_311(self):
        """auto: accepted before the first CONNACK; the broker turns out 3.1.1, so they are
        left out, counted and logged once; afterwards they are refused."""
        release = threading.Event()
        published = []

        def handler(conn, fb):
            body = fb.read_connect(conn)
            if body[6] == 5:
                release.wait(WAIT)
                conn.sendall(b"\x20\x02\x00\x01")  # unacceptable protocol version
                return
            conn.sendall(b"\x20\x02\x00\x00")
            while True:
                first, body = fb.read_packet(conn)
                if first >> 4 == 3:
                    published.append(body)
                elif first >> 4 == 12:
                    conn.sendall(b"\xd0\x00")
        fb = self.fake_broker(handler)
        d = self.daemon(fb.port, sections={"broker": {"protocol": "auto"}}, start=False)
        d.start(wait_connected=False)
        with d.client() as c:
            fb.wait_connects(1)
            for i in range(2):
                c.ok("publish", topic="t", payload=f"x{i}", content_type="a", wait=False)
            c.send({"id": "rq", "op": "request", "topic": "svc", "payload": "x"})
            release.set()
            wait_until(lambda: len(published) >= 2, what="both messages at the broker")
            self.assertEqual(published[0], b"\x00\x01tx0")  # topic and payload only
            wait_until(lambda: c.ok("stats")["stats"]["properties_dropped"] == 3,
                       what="properties_dropped")
            r = c.next(lambda x: x.get("id") == "rq")
            self.assertEqual(r["error"]["code"], "bad_request")
            self.assertIn("request needs MQTT 5", r["error"]["message"])
            r = c.request("publish", topic="t", payload="x", content_type="a")
            self.assertEqual(r["error"]["code"], "bad_request")
            self.assertIn("content_type needs MQTT 5", r["error"]["message"])
        self.assertEqual(d.logtext().count("properties of messages taken before"), 1)

if __name__ == "__main__":
    main()

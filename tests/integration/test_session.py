#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""The broker session against a real mosquitto (and a scripted one for faults)."""
import base64
import os
import signal
import socket
import struct
import time

from harness import TestCase, WAIT, connack_then, main, paused, qos0_burst, wait_until


class RealBroker(TestCase):
    def test_qos_round_trips(self):
        m = self.broker()
        d = self.daemon(m.port)
        with d.client() as sub, d.client() as pub:
            for qos in (0, 1, 2):
                r = sub.ok("subscribe", filter=f"rt/{qos}/#", qos=qos)
                self.assertEqual(r["granted_qos"], qos)
            for qos in (0, 1, 2):
                pub.ok("publish", topic=f"rt/{qos}/x", payload=f"q{qos}", qos=qos)
            got = {e["topic"]: e for e in sub.messages(3)}
            for qos in (0, 1, 2):
                e = got[f"rt/{qos}/x"]
                self.assertEqual(e["payload"], f"q{qos}")
                self.assertEqual(e["qos"], qos)
                self.assertFalse(e["retain"])
            st = pub.ok("stats")["stats"]
            self.assertGreaterEqual(st["pub_ok_count"], 3)
            self.assertEqual(st["pub_fail_count"], 0)
            self.assertGreater(st["pub_package_avg_size"], 0)
            self.assertGreater(st["sub_package_avg_size"], 0)

    def test_retained_message(self):
        m = self.broker()
        m.pub("ret/a", "kept", qos=1, retain=True)
        d = self.daemon(m.port)
        with d.client() as c:
            c.ok("subscribe", filter="ret/#", qos=1)
            e = c.event("message")
            self.assertEqual((e["topic"], e["payload"], e["retain"]), ("ret/a", "kept", True))
            # A retained publish through the daemon reaches a later direct subscriber.
            c.ok("publish", topic="ret/b", payload="mine", qos=1, retain=True)
        direct = self.direct_sub(m.port, "ret/b")
        self.assertEqual(direct.next(), ("ret/b", b"mine", True))

    def test_will_after_abnormal_close_only(self):
        m = self.broker()
        will = {"topic": "wills/bridge", "message": "gone", "qos": "1", "retain": "false"}
        d = self.daemon(m.port, sections={"will": will})
        watcher = self.direct_sub(m.port, "wills/bridge")
        d.stop(signal.SIGKILL)
        self.assertEqual(watcher.next(), ("wills/bridge", b"gone", False))

        # A clean stop sends DISCONNECT: no will. The sentinel, published after the daemon
        # has exited, must be the next thing the watcher sees.
        d.start()
        self.assertEqual(d.stop(), 0)
        m.pub("wills/bridge", "sentinel", qos=1)
        self.assertEqual(watcher.next(), ("wills/bridge", b"sentinel", False))

    def test_no_will_after_a_clean_stop_behind_a_backlog(self):
        """The socket takes about 16 KiB of unsent bytes at a time (TCP_NOTSENT_LOWAT); the
        last flush of a clean stop lifts that, so the DISCONNECT behind a backlog still goes
        and the broker publishes no will."""
        m = self.broker()
        will = {"topic": "wills/backlog", "message": "gone", "qos": "1", "retain": "false"}
        d = self.daemon(m.port, sections={"will": will})
        watcher = self.direct_sub(m.port, "wills/backlog")
        with d.client() as c, paused(m.proc):  # the broker stops reading: output waits
            c.send_raw(qos0_burst("bl", 400, 900))
            c.ok("ping")  # all of it read
            self.assertEqual(d.stop(), 0)
        m.pub("wills/backlog", "sentinel", qos=1)
        self.assertEqual(watcher.next(), ("wills/backlog", b"sentinel", False))

    def test_keepalive_pings_and_rtt(self):
        m = self.broker()
        d = self.daemon(m.port, sections={"broker": {"keepalive": "1"}})
        with d.client() as c:
            c.ok("events", ping=True)
            e1 = c.event("ping", timeout=5)
            e2 = c.event("ping", timeout=5)
            self.assertGreaterEqual(e1["rtt_ms"], 0)
            self.assertGreaterEqual(e2["rtt_ms"], 0)
            st = c.ok("stats")["stats"]
            self.assertGreaterEqual(st["ping_sent_count"], 2)
            self.assertGreaterEqual(st["ping_received_count"], 2)
            self.assertGreaterEqual(st["ping_rtt_ms"], 0)
            r = c.ok("ping")
            self.assertIsInstance(r["broker_rtt_ms"], int)
            self.assertTrue(c.ok("status")["status"]["connected"])

    def test_broker_restart_keeps_queued_messages(self):
        m = self.broker(persistence=True)
        d = self.daemon(m.port, sections={"broker": {"clean_session": "false",
                                                     "client_id": "restart-test"}})
        with d.client() as sub, d.client() as pub:
            sub.ok("events", connection=True)
            sub.ok("subscribe", filter="persist/#", qos=1)
            m.stop()
            sub.event("disconnected")
            for i in range(100):
                pub.ok("publish", topic=f"persist/{i}", payload=str(i), qos=1, wait=False)
            self.assertEqual(pub.ok("status")["status"]["queued"], 100)
            m.start()
            sub.event("connected", timeout=WAIT)
            got = sorted(int(e["payload"]) for e in sub.messages(100))
            self.assertEqual(got, list(range(100)))
            st = pub.ok("status")["status"]
            self.assertEqual(st["queued"] + st["inflight"], 0)
            self.assertGreaterEqual(st["reconnects"], 1)
            # The broker kept the session: it said so.
            self.assertTrue(st["session_present"])

    def test_clean_session_restores_subscriptions(self):
        m = self.broker()
        d = self.daemon(m.port)
        with d.client() as sub:
            sub.ok("events", connection=True)
            sub.ok("subscribe", filter="again/#", qos=1)
            m.stop()
            sub.event("disconnected")
            m.start()
            sub.event("connected")
            # The restore is sent before anything else after CONNACK; a message published
            # directly after our own probe round trip must arrive.
            sub.ok("publish", topic="again/probe", payload="p", qos=1)
            self.assertEqual(sub.event("message")["payload"], "p")
            m.pub("again/x", "direct", qos=1)
            self.assertEqual(sub.event("message")["payload"], "direct")

    def test_connack_refusal_and_password(self):
        m = self.broker_with_password("alice", "s3cret")
        # MQTT 3.1.1's return codes here; MQTT 5's reason codes in test_mqtt5.py.
        d = self.daemon(m.port, sections={"broker": {"username": "alice", "password": "wrong",
                                                     "protocol": "3.1.1"}},
                        start=False)
        d.start(wait_connected=False)
        with d.client() as c:
            err = wait_until(lambda: c.ok("status")["status"]["last_error"],
                             what="a CONNACK refusal")
            self.assertIn(err, ["connection refused: not authorized",
                                "connection refused: bad user name or password"])
            self.assertFalse(c.ok("status")["status"]["connected"])
            self.assertGreaterEqual(c.ok("stats")["stats"]["connections_failed"], 1)
        self.assertNotIn("wrong", d.logtext())  # the password is never logged
        d.stop()
        secret = os.path.join(self.tmp, "pw")
        with open(secret, "w") as f:
            f.write("s3cret\n")
        os.chmod(secret, 0o600)
        d.write_config({**d.cfg, "broker": {**d.cfg["broker"], "password": "",
                                            "password_file": secret}})
        d.start()
        with d.client() as c:
            st = c.ok("status")["status"]
            self.assertTrue(st["connected"])
            self.assertIsNone(st["last_error"])

    def test_packet_log_hides_the_password(self):
        m = self.broker_with_password("bob", "hunter2")
        # The bytes asserted are MQTT 3.1.1's.
        d = self.daemon(m.port, sections={"broker": {"username": "bob", "password": "hunter2",
                                                     "protocol": "3.1.1"},
                                          "log": {"level": "packet"}})
        with d.client() as c:
            c.ok("publish", topic="pk/t", payload="x", qos=1)
        log = d.logtext()
        self.assertRegex(log, r"> CONNECT \(\d+ bytes\): 10 ")
        self.assertRegex(log, r"< CONNACK \(4 bytes\): 20 02 00 00")
        self.assertRegex(log, r"> PUBLISH .*\n.*< PUBACK")
        self.assertNotIn("hunter2", log)
        self.assertNotIn(" ".join(f"{b:02x}" for b in b"hunter2"), log)

    def test_connection_refused_error_and_backoff(self):
        from harness import free_port
        port = free_port()  # nothing listens here
        d = self.daemon(port, start=False)
        d.start(wait_connected=False)
        with d.client() as c:
            err = wait_until(lambda: c.ok("status")["status"]["last_error"], what="an error")
            self.assertEqual(err, f"connect to 127.0.0.1:{port}: Connection refused")
            st = c.ok("status")["status"]
            self.assertEqual(st["state"], "idle")
            self.assertIsInstance(st["next_retry_ms"], int)
            # A refused connection widens the backoff window: up to twice reconnect_max (2 s).
            self.assertLessEqual(st["next_retry_ms"], 4000)
            # Publishing while the broker is away queues the message.
            c.ok("publish", topic="q/1", payload="x", qos=1, wait=False)
            self.assertEqual(c.ok("status")["status"]["queued"], 1)

    def test_hosts_tried_in_turn_names_and_ipv6(self):
        from harness import free_port
        m = self.broker(extra="")
        dead = free_port()
        # A dead first host, then the broker by name (resolved off the event loop).
        d = self.daemon(m.port, sections={"broker": {
            "host": f"127.0.0.1:{dead}, localhost:{m.port}"}})
        with d.client() as c:
            st = c.ok("status")["status"]
            self.assertTrue(st["connected"])
            self.assertEqual(st["broker"], f"127.0.0.1:{m.port}")
        self.assertIn(f"connect to 127.0.0.1:{dead}: Connection refused", d.logtext())
        self.assertEqual(d.stop(), 0)

        if not socket.has_ipv6 or not ipv6_loopback():
            self.skipTest("no IPv6 loopback here")
        m6 = self.broker(extra=f"listener {free_port()} ::1")
        port6 = int(open(m6.conf).read().split("listener ")[2].split()[0])
        d6 = self.daemon(port6, sections={"broker": {"host": f"[::1]:{port6}"}}, name="d6")
        with d6.client() as c:
            self.assertEqual(c.ok("status")["status"]["broker"], f"[::1]:{port6}")


def ipv6_loopback():
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def connack(rc, session_present=0):
    return bytes([0x20, 2, session_present, rc])


class FakeBrokerFaults(TestCase):
    def test_unanswered_pingreq_reconnects(self):
        fb = self.fake_broker(connack_then())
        d = self.daemon(fb.port, sections={"broker": {"keepalive": "1", "reconnect_min": "1"}})
        connects = fb.wait_connects(2, timeout=6)
        gap = connects[1][0] - connects[0][0]
        # PINGREQ after 1 s, dead 1 s later, reconnect within reconnect_min (1 s) + slack.
        self.assertLess(gap, 1.5 * 1 + 1 + 1.5)
        self.assertGreater(gap, 1.0)
        # Whichever comes first: the unanswered PINGREQ or 1.5 x keepalive of silence.
        self.assertRegex(d.logtext(), r"no PINGRESP within 1000 ms|broker silent for 1[0-9]{3} ms")

    def test_malformed_packet_reconnects(self):
        fb = self.fake_broker(connack_then(bytes([0x30, 0x03, 0x00, 0x01, ord("#")])))
        d = self.daemon(fb.port, start=False)
        d.start(wait_connected=False)
        fb.wait_connects(2)
        self.assertTrue(d.alive())
        self.assertIn("protocol error from broker: topic name must not contain wildcards",
                      d.logtext())

    def test_every_connack_refusal_code(self):
        texts = {1: "unacceptable protocol version", 2: "identifier rejected",
                 3: "server unavailable", 4: "bad user name or password", 5: "not authorized"}
        for rc, text in texts.items():
            with self.subTest(rc=rc):
                def handler(conn, fb, rc=rc):
                    fb.read_connect(conn)
                    conn.sendall(connack(rc))
                    fb.read_packet(conn)
                fb = self.fake_broker(handler)
                d = self.daemon(fb.port, start=False, name=f"d{rc}")
                d.start(wait_connected=False)
                with d.client() as c:
                    err = wait_until(lambda: c.ok("status")["status"]["last_error"])
                    self.assertEqual(err, f"connection refused: {text}")
                self.assertEqual(d.stop(), 0)

    def test_suback_failure_is_refused(self):
        def handler(conn, fb):
            fb.read_connect(conn)
            conn.sendall(connack(0))
            while True:
                t, body = fb.read_packet(conn)
                if t >> 4 == 8:  # SUBSCRIBE: refuse every filter
                    conn.sendall(bytes([0x90, 3]) + body[:2] + b"\x80")
                elif t >> 4 == 12:  # PINGREQ
                    conn.sendall(b"\xd0\x00")
        fb = self.fake_broker(handler)
        d = self.daemon(fb.port)
        with d.client() as c:
            r = c.request("subscribe", filter="no/#", qos=1)
            self.assertEqual(r["error"]["code"], "refused")
            self.assertIn("no/#", r["error"]["message"])
            self.assertEqual(c.request("unsubscribe", filter="no/#")["error"]["code"],
                             "not_subscribed")
            self.assertEqual(c.ok("status")["status"]["subscriptions"], 0)

    def test_connect_packet_fields(self):
        fb = self.fake_broker(connack_then())
        self.daemon(fb.port, sections={
            "broker": {"client_id": "cid-1", "username": "u", "password": "p",
                       "keepalive": "33", "clean_session": "false"},
            "will": {"topic": "w/t", "message": "bye", "qos": "2", "retain": "true"}})
        body = fb.wait_connects(1)[0][1]
        self.assertEqual(body[:7], b"\x00\x04MQTT\x04")
        flags = body[7]
        self.assertEqual(flags, 0x80 | 0x40 | 0x20 | (2 << 3) | 0x04)  # no clean session
        self.assertEqual(struct.unpack(">H", body[8:10])[0], 33)
        self.assertIn(b"\x00\x05cid-1\x00\x03w/t\x00\x03bye\x00\x01u\x00\x01p", body)

    def test_generated_client_id_is_stable(self):
        def handler(conn, fb):
            fb.read_connect(conn)
            conn.sendall(connack(0))
            conn.close()
        fb = self.fake_broker(handler)
        d = self.daemon(fb.port, start=False)
        d.start(wait_connected=False)
        c = fb.wait_connects(2)
        ids = [body[12:12 + struct.unpack(">H", body[10:12])[0]] for _, body in c[:2]]
        self.assertEqual(ids[0], ids[1])
        self.assertTrue(ids[0].startswith(b"mqttbridge-"))


if __name__ == "__main__":
    main()

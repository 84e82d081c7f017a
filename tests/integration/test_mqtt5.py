#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""MQTT 5 on the broker link: against a real mosquitto 2 in MQTT 5 (the default, auto), and
a scripted MQTT 5 broker for the limits mosquitto cannot be made to set. The scripted
broker's packets are written out by hand from the standard's layouts."""
import signal
import threading
import time

from harness import WAIT, FakeBroker, TestCase, main, wait_until


def varint(n):
    out = b""
    while True:
        b, n = n & 0x7F, n >> 7
        out += bytes([b | (0x80 if n else 0)])
        if not n:
            return out


def packet(first, body):
    return bytes([first]) + varint(len(body)) + body


def props(*items):
    """A property block from (identifier, value bytes) pairs."""
    block = b"".join(bytes([i]) + v for i, v in items)
    return varint(len(block)) + block


def u16(n):
    return n.to_bytes(2, "big")


def u32(n):
    return n.to_bytes(4, "big")


def utf8(s):
    return u16(len(s)) + s.encode()


def read_varint(data, at):
    n, shift = 0, 0
    while True:
        b = data[at]
        at += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return n, at


def parse_publish5(first, body):
    """(topic, packet id, properties bytes, payload) of an MQTT 5 PUBLISH."""
    tlen = int.from_bytes(body[:2], "big")
    topic, at = body[2:2 + tlen].decode(), 2 + tlen
    pid = None
    if (first >> 1) & 3:
        pid, at = int.from_bytes(body[at:at + 2], "big"), at + 2
    plen, at = read_varint(body, at)
    return topic, pid, body[at:at + plen], body[at + plen:]


def alias_of(prop_bytes):
    at = 0
    while at < len(prop_bytes):
        pid = prop_bytes[at]
        if pid == 0x23:
            return int.from_bytes(prop_bytes[at + 1:at + 3], "big")
        # Only what the daemon sends on a plain PUBLISH: the alias (2 bytes).
        raise AssertionError(f"unexpected property 0x{pid:02x}")
    return None


def serve5(connack_props, on_packet=None):
    """A scripted MQTT 5 broker: CONNACK with `connack_props`, PUBACK for QoS 1, then
    on_packet(conn, first, body) for every packet it reads."""
    def handler(conn, fb):
        body = fb.read_connect(conn)
        assert body[6] == 5, "expected an MQTT 5 CONNECT"
        conn.sendall(packet(0x20, b"\x00\x00" + connack_props))
        while True:
            first, body = fb.read_packet(conn)
            if on_packet:
                on_packet(conn, first, body)
            elif first >> 4 == 12:  # PINGREQ
                conn.sendall(b"\xd0\x00")
    return handler


class RealBroker5(TestCase):
    def daemon(self, broker_port, **kw):
        """MQTT 5 whatever the build's test_protocol."""
        sections = {k: dict(v) for k, v in (kw.get("sections") or {}).items()}
        sections.setdefault("broker", {}).setdefault("protocol", "5")
        return super().daemon(broker_port, **{**kw, "sections": sections})

    def test_round_trips_and_limits_in_status(self):
        m = self.broker()
        d = self.daemon(m.port)
        with d.client() as sub, d.client() as pub:
            st = pub.ok("status")["status"]
            self.assertEqual(st["protocol"], "5")
            lim = st["broker_limits"]
            self.assertEqual(lim["maximum_qos"], 2)
            self.assertTrue(lim["retain_available"])
            self.assertGreater(lim["topic_alias_maximum"], 0)  # mosquitto offers some
            for qos in (0, 1, 2):
                self.assertEqual(sub.ok("subscribe", filter=f"v5/{qos}/#", qos=qos)["granted_qos"],
                                 qos)
            for i in range(5):
                for qos in (0, 1, 2):
                    pub.ok("publish", topic=f"v5/{qos}/x", payload=f"{qos}.{i}", qos=qos)
            got = sub.messages(15)
            self.assertEqual(sorted(e["payload"] for e in got),
                             sorted(f"{q}.{i}" for q in (0, 1, 2) for i in range(5)))
            for e in got:
                self.assertEqual(e["qos"], int(e["payload"][0]))
            # The same three topics again and again: sent by alias after their first time.
            self.assertGreaterEqual(pub.ok("stats")["stats"]["topic_aliases_used"], 12)

    def test_overlapping_and_shared_copies_once(self):
        # An MQTT 5 broker sends one copy per matching subscription; each local client still
        # gets each message once, and a group member is chosen once.
        m = self.broker()
        d = self.daemon(m.port)
        with d.client() as a, d.client() as b, d.client() as g, d.client() as pub:
            a.ok("subscribe", filter="ov/#", qos=1)
            a.ok("subscribe", filter="ov/+/x", qos=1)
            b.ok("subscribe", filter="ov/a/x", qos=0)
            g.ok("subscribe", filter="$share/grp/ov/#", qos=1)
            for i in range(10):
                pub.ok("publish", topic="ov/a/x", payload=str(i), qos=1)
            for c in (a, b, g):
                self.assertEqual([e["payload"] for e in c.messages(10)],
                                 [str(i) for i in range(10)])
            pub.ok("publish", topic="ov/end", payload="end", qos=1)
            for c in (a, g):  # the next message each sees is the sentinel: no duplicates
                self.assertEqual(c.event("message")["payload"], "end")

    def test_copies_after_a_reconnect_and_at_the_best_qos(self):
        # After a reconnect (restores, then a resumed session) still once per client; a
        # client gets the copy of its best filter, not a lower QoS one meant for another.
        m = self.broker(persistence=True)  # a broker restart resumes the session
        d = self.daemon(m.port, sections={"broker": {"clean_session": "false",
                                                     "client_id": "v5-copies"}})
        with d.client() as a, d.client() as b, d.client() as pub:
            a.ok("subscribe", filter="cp/#", qos=0)
            a.ok("subscribe", filter="cp/+/x", qos=1)
            b.ok("subscribe", filter="cp/+/x", qos=1)
            for round_ in ("before", "after-reconnect", "after-resume"):
                if round_ == "after-reconnect":
                    pub.ok("reconnect")
                    pub.wait_connected()
                pub.ok("publish", topic="cp/a/x", payload=round_, qos=1)
                for c in (a, b):
                    e = c.event("message")
                    self.assertEqual((e["payload"], e["qos"]), (round_, 1))
                if round_ == "after-reconnect":
                    m.stop()
                    m.start()
                    pub.wait_connected()
                    self.assertTrue(pub.ok("status")["status"]["session_present"])
            pub.ok("publish", topic="cp/end", payload="end", qos=1)
            self.assertEqual(a.event("message")["payload"], "end")  # nothing twice before it

    def test_copies_after_restores(self):
        # A clean session: the subscriptions are restored after a reconnect, each granted
        # again by its SUBACK; still once per client.
        m = self.broker()
        d = self.daemon(m.port)
        with d.client() as a, d.client() as pub:
            a.ok("subscribe", filter="rs/#", qos=1)
            a.ok("subscribe", filter="rs/+/x", qos=1)
            pub.ok("reconnect")
            pub.wait_connected()
            pub.ok("publish", topic="rs/probe", payload="probe", qos=1)  # the restores are in
            self.assertEqual(a.event("message")["payload"], "probe")
            pub.ok("publish", topic="rs/a/x", payload="once", qos=1)
            pub.ok("publish", topic="rs/end", payload="end", qos=1)
            self.assertEqual([e["payload"] for e in a.messages(2)], ["once", "end"])

    def test_refusals_carry_reason_codes(self):
        m = self.broker_with_acl("topic readwrite open/#\n")
        d = self.daemon(m.port)
        with d.client() as c:
            c.ok("publish", topic="open/x", payload="fine", qos=1)
            r = c.request("publish", topic="closed/x", payload="no", qos=1)
            self.assertFalse(r["ok"], r)
            self.assertEqual(r["error"]["code"], "refused")
            self.assertIn("Not authorized (0x87)", r["error"]["message"])
            self.assertGreaterEqual(c.ok("stats")["stats"]["pub_fail_count"], 1)

    def test_connack_refusal_reason(self):
        m = self.broker_with_password("alice", "s3cret")
        d = self.daemon(m.port, sections={"broker": {"username": "alice", "password": "no"}},
                        start=False)
        d.start(wait_connected=False)
        with d.client() as c:
            err = wait_until(lambda: c.ok("status")["status"]["last_error"], what="a refusal")
            self.assertRegex(err, r"^connection refused: (Not authorized \(0x87\)|"
                                  r"Bad User Name or Password \(0x86\))")

    def test_session_expiry_across_restarts(self):
        # The broker keeps the session for session_expiry after the link goes, and no longer.
        m = self.broker()
        broker = {"clean_session": "false", "client_id": "v5-persistent", "session_expiry": "60"}
        d = self.daemon(m.port, sections={"broker": broker})
        self.assertEqual(d.stop(), 0)
        d.start()
        with d.client() as c:
            self.assertTrue(c.ok("status")["status"]["session_present"])
        d.write_config({**d.cfg, "broker": {**d.cfg["broker"], "session_expiry": "1"}})
        with d.client() as c:
            c.ok("reload")  # a new session expiry reconnects, asking for 1 s
            wait_until(lambda: c.ok("stats")["stats"]["reconnects"] >= 1, what="the reconnect")
        self.assertEqual(d.stop(), 0)
        time.sleep(2.5)  # the broker's clock, not a synchronisation: past the 1 s expiry
        d.start()
        with d.client() as c:
            self.assertFalse(c.ok("status")["status"]["session_present"])

    def test_will_delay(self):
        m = self.broker()
        d = self.daemon(m.port, sections={
            "broker": {"clean_session": "false", "client_id": "v5-will", "session_expiry": "60"},
            "will": {"topic": "wills/v5", "message": "gone", "qos": "1", "delay": "3"}})
        watcher = self.direct_sub(m.port, "wills/v5")
        d.stop(signal.SIGKILL)
        with self.assertRaises(Exception):  # not before its delay
            watcher.next(timeout=1.0)
        self.assertEqual(watcher.next(timeout=WAIT), ("wills/v5", b"gone", False))


class Scripted5(TestCase):
    def fake5(self, connack_props, on_packet=None):
        return self.fake_broker(serve5(connack_props, on_packet))

    def test_receive_maximum_2_on_the_wire(self):
        lock = threading.Lock()
        state = {"inflight": 0, "most": 0, "seen": 0, "held": []}

        def on_packet(conn, first, body):
            if first >> 4 == 3:
                _, pid, _, _ = parse_publish5(first, body)
                with lock:
                    state["inflight"] += 1
                    state["seen"] += 1
                    state["most"] = max(state["most"], state["inflight"])
                    state["held"].append(pid)
                    # Acknowledge only once two are outstanding: a third must not come first.
                    if len(state["held"]) == 2:
                        for p in state["held"]:
                            conn.sendall(packet(0x40, u16(p)))
                        state["inflight"] -= 2
                        state["held"] = []
            elif first >> 4 == 12:
                conn.sendall(b"\xd0\x00")
        fb = self.fake5(props((0x21, u16(2))), on_packet)
        d = self.daemon(fb.port, sections={"broker": {"protocol": "5", "max_inflight": "20"}})
        with d.client() as c:
            self.assertEqual(c.ok("status")["status"]["broker_limits"]["receive_maximum"], 2)
            for i in range(10):
                c.ok("publish", topic="rm/t", payload=str(i), qos=1, wait=False)
            wait_until(lambda: state["seen"] == 10, what="ten PUBLISHes")
        self.assertEqual(state["most"], 2)

    def test_limits_refuse_before_sending(self):
        got = []

        def on_packet(conn, first, body):
            if first >> 4 == 3:
                got.append(len(body) + 2)
                _, pid, _, _ = parse_publish5(first, body)
                if pid:
                    conn.sendall(packet(0x40, u16(pid)))
        fb = self.fake5(props((0x24, b"\x01"), (0x25, b"\x00"), (0x27, u32(512))), on_packet)
        d = self.daemon(fb.port, sections={"broker": {"protocol": "5"}})
        with d.client() as c:
            r = c.request("publish", topic="l/q2", payload="x", qos=2)
            self.assertEqual(r["error"]["code"], "refused")
            self.assertIn("at most QoS 1", r["error"]["message"])
            r = c.request("publish", topic="l/r", payload="x", qos=1, retain=True)
            self.assertEqual(r["error"]["code"], "refused")
            self.assertIn("Retain Available", r["error"]["message"])
            r = c.request("publish", topic="l/big", payload="b" * 1000, qos=1)
            self.assertEqual(r["error"]["code"], "too_large")
            c.ok("publish", topic="l/fits", payload="f" * 400, qos=1)
        self.assertEqual(len(got), 1)
        self.assertLessEqual(max(got), 512)

    def test_topic_aliases_on_the_wire(self):
        seen = []

        def on_packet(conn, first, body):
            if first >> 4 == 3:
                topic, _, prop_bytes, _ = parse_publish5(first, body)
                seen.append((topic, alias_of(prop_bytes)))
        fb = self.fake5(props((0x22, u16(5))), on_packet)
        d = self.daemon(fb.port, sections={"broker": {"protocol": "5"}})
        topics = [f"alias/{i}" for i in range(6)] + ["alias/5", "alias/4", "alias/0"]
        with d.client() as c:
            for t in topics:
                c.ok("publish", topic=t, payload="p", qos=0)
            wait_until(lambda: len(seen) == len(topics), what="every PUBLISH")
            self.assertEqual(c.ok("stats")["stats"]["topic_aliases_used"], 2)
        # Five aliases; the sixth topic takes the least recently used one (alias/0's); known
        # topics go by alias alone; alias/0 comes back with the next least recently used.
        self.assertEqual(seen, [("alias/0", 1), ("alias/1", 2), ("alias/2", 3), ("alias/3", 4),
                                ("alias/4", 5), ("alias/5", 1), ("", 1), ("", 5),
                                ("alias/0", 2)])

    def test_server_disconnect_with_reason(self):
        def on_packet(conn, first, body):
            if first >> 4 == 8:  # the SUBSCRIBE: answer with a DISCONNECT instead
                conn.sendall(packet(0xE0, b"\x8e" + props((0x1F, utf8("another one took it")))))
        fb = self.fake5(b"\x00", on_packet)
        d = self.daemon(fb.port, sections={"broker": {"protocol": "5"}})
        with d.client() as c:
            c.ok("events", connection=True)
            c.send({"id": "sub", "op": "subscribe", "filter": "x/#", "qos": 1, "timeout_ms": 500})
            e = c.event("disconnected")
            self.assertEqual(e["reason_code"], 0x8E)
            self.assertEqual(e["reason"], "the broker disconnected: Session taken over (0x8E): "
                                          "another one took it")
            err = wait_until(lambda: c.ok("status")["status"]["last_error"], what="the reason")
            self.assertEqual(err, e["reason"])

    def test_server_reference_redirect(self):
        other = self.fake5(b"\x00")
        fb = self.fake_broker(lambda conn, f: (
            f.read_connect(conn),
            conn.sendall(packet(0x20, b"\x00\x9c" + props((0x1C, utf8(f"127.0.0.1:{other.port}")))))))
        d = self.daemon(fb.port, sections={"broker": {"protocol": "5"}}, start=False)
        d.start(wait_connected=False)
        with d.client() as c:
            c.wait_connected()
            self.assertEqual(c.ok("status")["status"]["broker"], f"127.0.0.1:{other.port}")
        self.assertIn("the broker sent us to", d.logtext())

    def test_auto_falls_back_to_311(self):
        def handler(conn, fb):
            body = fb.read_connect(conn)
            if body[6] == 5:
                conn.sendall(b"\x20\x02\x00\x01")  # a 3.1.1 broker: unacceptable version
                return
            conn.sendall(b"\x20\x02\x00\x00")
            while True:
                first, _ = fb.read_packet(conn)
                if first >> 4 == 12:
                    conn.sendall(b"\xd0\x00")
        fb = self.fake_broker(handler)
        d = self.daemon(fb.port, sections={"broker": {"protocol": "auto"}})
        with d.client() as c:
            st = c.ok("status")["status"]
            self.assertTrue(st["connected"])
            self.assertEqual(st["protocol"], "3.1.1")
        self.assertEqual([b[6] for _, b in fb.connects[:2]], [5, 4])
        self.assertIn("the broker refused MQTT 5", d.logtext())


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Shared subscriptions ($share/GROUP/FILTER): the daemon holds one broker subscription for
the group and hands each message to exactly one local member, in turns."""
import json
import select
import time

from harness import WAIT, TestCase, main, wait_until

FILTER = "$share/g/jobs/#"


def publish(pub, first, count):
    """Publish payloads first .. first+count-1 at QoS 1 through the daemon (pipelined, without
    waiting for the replies: see accepted)."""
    pub.send_raw("".join(json.dumps(
        {"id": f"p{i}", "op": "publish", "topic": f"jobs/{i % 7}", "payload": str(i), "qos": 1,
         "wait": False}) + "\n" for i in range(first, first + count)).encode())


def accepted(pub, first, count):
    """The daemon's replies to publish(pub, first, count), in order, all ok."""
    for i in range(first, first + count):
        r = pub.next(lambda m: "event" not in m)
        assert r == {"id": f"p{i}", "ok": True}, r


def take_lines(c, got):
    """Move the complete lines already read from c (events kept by the harness and whole lines
    in its buffer) into got[c] (message payloads as numbers) or c.events (anything else)."""
    kept = [m for m in c.events if m.get("event") != "message"]
    got[c] += [int(m["payload"]) for m in c.events if m.get("event") == "message"]
    c.events = kept
    *lines, c.buf = c.buf.split(b"\n")
    for line in lines:
        m = json.loads(line)
        if m.get("event") == "message":
            got[c].append(int(m["payload"]))
        else:
            c.events.append(m)


def pump(workers, got, done, what, timeout=WAIT * 3):
    """Read from every worker at once (none may stall the others) until done() is true."""
    deadline = time.monotonic() + timeout
    for w in workers:
        take_lines(w, got)
    while not done():
        left = deadline - time.monotonic()
        if left <= 0:
            counts = {i: len(got[w]) for i, w in enumerate(workers)}
            raise AssertionError(f"timed out after {timeout}s waiting for {what}: {counts}")
        ready, _, _ = select.select([w.sock for w in workers], [], [], left)
        for w in workers:
            if w.sock in ready:
                chunk = w.sock.recv(1 << 20)
                if not chunk:
                    raise EOFError("daemon closed a worker's connection")
                w.buf += chunk
                take_lines(w, got)


def nothing_more(test, workers, got):
    """A round trip later, no worker has a message waiting (no late duplicate)."""
    for w in workers:
        before = len(got[w])
        w.ok("ping")
        take_lines(w, got)
        test.assertEqual(len(got[w]), before, "a message arrived after all were counted")


class Shared(TestCase):
    def setUp(self):
        super().setUp()
        self.m = self.broker()
        self.d = self.daemon(self.m.port)

    def workers(self, n, filt=FILTER):
        ws = []
        for _ in range(n):
            w = self.d.client()
            self.cleanups.append(w.close)
            w.ok("subscribe", filter=filt, qos=1)
            ws.append(w)
        return ws

    def test_each_message_to_one_worker_fairly(self):
        total = 1000
        ws = self.workers(3)
        got = {w: [] for w in ws}
        with self.d.client() as pub:
            # One broker subscription serves the whole group.
            self.assertEqual(pub.ok("status")["status"]["subscriptions"], 1)
            publish(pub, 0, total)
            pump(ws, got, lambda: sum(map(len, got.values())) >= total, "all messages")
            accepted(pub, 0, total)
            nothing_more(self, ws, got)
            self.assertEqual(sorted(sum(got.values(), [])), list(range(total)))
            for w in ws:
                self.assertGreaterEqual(len(got[w]), total // 5, [len(x) for x in got.values()])
                self.assertEqual(got[w], sorted(got[w]), "one worker's share out of order")
            self.assertEqual(pub.ok("stats")["stats"]["messages_dropped"], 0)

    def test_worker_leaving_mid_stream(self):
        # Messages the daemon had already queued toward the worker that leaves, or that sat
        # unread in its socket, are lost with it (as with any client that closes). Every
        # message published once the daemon has seen it go reaches exactly one of the others.
        before, after = 500, 500
        a, b, gone = self.workers(3)
        got = {a: [], b: [], gone: []}
        with self.d.client() as pub:
            publish(pub, 0, before)
            pump([a, b, gone], got, lambda: len(got[gone]) >= 10, "the leaver's first messages")
            gone.close()  # while the first batch is still on its way
            wait_until(lambda: pub.ok("status")["status"]["local_clients"] == 3,
                       what="the daemon to see the worker go")
            accepted(pub, 0, before)
            publish(pub, before, after)
            late = set(range(before, before + after))
            pump([a, b], got, lambda: late <= set(got[a] + got[b]), "the later messages")
            accepted(pub, before, after)
            nothing_more(self, [a, b], got)
        every = got[a] + got[b] + got[gone]
        self.assertEqual(len(every), len(set(every)), "a message was delivered twice")
        self.assertTrue(set(every) <= set(range(before + after)))
        for w in (a, b):
            share = [x for x in got[w] if x >= before]
            self.assertGreaterEqual(len(share), after // 5, "the remaining workers take turns")

    def test_groups_and_plain_holders(self):
        total = 60
        group_a = self.workers(2, "$share/a/jobs/+")
        group_b = self.workers(1, "$share/b/jobs/#")
        plain = self.workers(1, "jobs/#")
        # A worker in group a that also holds the plain filter: one copy per message.
        both = self.workers(1, "jobs/#")[0]
        both.ok("subscribe", filter="$share/a/jobs/+", qos=1)
        every = group_a + group_b + plain + [both]
        got = {w: [] for w in every}
        with self.d.client() as pub:
            self.assertEqual(pub.ok("status")["status"]["subscriptions"], 3)
            publish(pub, 0, total)
            want = {w: total for w in group_b + plain + [both]}

            def done():
                return (all(len(got[w]) >= n for w, n in want.items()) and
                        len(got[group_a[0]]) + len(got[group_a[1]]) >= total * 2 // 3)
            pump(every, got, done, "every copy")
            accepted(pub, 0, total)
            nothing_more(self, every, got)
        for w in group_b + plain + [both]:
            self.assertEqual(got[w], list(range(total)))
        # Group a's three members share the messages; `both` got all of them anyway, and its
        # turns are the messages the other two did not get.
        a_only = sorted(got[group_a[0]] + got[group_a[1]])
        self.assertEqual(len(a_only), len(set(a_only)))
        self.assertEqual(len(a_only), total * 2 // 3)

    def test_no_retained_for_members(self):
        # mosquitto 2.0.11 sends the retained messages for a new shared subscription too; the
        # daemon keeps them from the group (MQTT 5: a new shared subscription gets none).
        self.m.pub("jobs/r", "kept", qos=1, retain=True)
        (w,) = self.workers(1)
        with self.d.client() as plain:
            plain.ok("subscribe", filter="jobs/r", qos=1)
            # Sent by the broker after the group's, so the group's has been routed by now.
            e = plain.event("message")
            self.assertEqual((e["payload"], e["retain"]), ("kept", True))
        w.ok("ping")
        self.assertEqual([e for e in w.events if e.get("event") == "message"], [])


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""QoS 2 exactly once across kill -9, with a spool and a persistent session: outgoing
messages resume under the packet ids they had, incoming ones already delivered are not
delivered again when the broker resends them."""
import collections
import os
import signal

from harness import Proxy, TestCase, main, wait_until


class ExactlyOnce(TestCase):
    def setUp(self):
        super().setUp()
        self.m = self.broker()
        self.proxy = Proxy(self.m.port)
        self.cleanups.append(self.proxy.close)

    def persistent_daemon(self, fsync="batch"):
        return self.daemon(self.proxy.port, sections={
            "broker": {"client_id": "exactly-once", "clean_session": "false"},
            "queue": {"spool_dir": os.path.join(self.tmp, "spool"), "fsync": fsync}})

    def restart_after_kill(self, d):
        """Kill the daemon, cut its link, and only then stop losing packets: what it sent
        before it died may still sit in the proxy, and must be lost as the test intends."""
        d.stop(signal.SIGKILL)
        self.proxy.drop()
        self.proxy.drop_up, self.proxy.drop_down = set(), set()
        d.start()

    def test_outgoing_resumes_with_the_same_packet_ids(self):
        """The broker's answers are lost (PUBCOMP, or PUBREC) and the daemon is killed: after
        the restart it sends PUBREL, or PUBLISH with DUP, under the ids it used before, so
        the broker delivers each message once."""
        for lost, fsync in ((7, "batch"), (5, "never"), (7, "always")):
            with self.subTest(lost=lost, fsync=fsync):
                self.proxy.drop_down = {lost}
                d = self.persistent_daemon(fsync)
                prefix = f"eo/{lost}{fsync}"
                direct = self.direct_sub(self.m.port, f"{prefix}/#", qos=2)
                n = 200
                with d.client() as c:
                    c.send_raw("".join(
                        f'{{"id":{i},"op":"publish","topic":"{prefix}/{i}","payload":"{i}",'
                        f'"qos":2,"wait":false}}\n' for i in range(n)).encode())
                    for _ in range(n):
                        self.assertTrue(c.next(lambda x: "event" not in x)["ok"])
                    # The window is full of messages whose last answer never came.
                    wait_until(lambda: c.ok("status")["status"]["inflight"] == 20,
                               what="the in-flight window to fill")
                got = collections.Counter()
                if lost == 7:  # past PUBREL: the broker has delivered these already
                    for _ in range(20):
                        got[direct.next()[0]] += 1
                self.restart_after_kill(d)
                with d.client() as c:
                    c.ok("publish", topic=f"{prefix}/end", payload="end", qos=2)
                while True:  # the broker keeps one client's QoS 2 messages in order
                    topic = direct.next()[0]
                    got[topic] += 1
                    if topic.endswith("/end"):
                        break
                self.assertEqual(set(got) - {f"{prefix}/end"},
                                 {f"{prefix}/{i}" for i in range(n)})
                self.assertEqual([t for t, k in got.items() if k > 1], [], "delivered twice")
                self.assertEqual(d.stop(), 0)
                direct.close()

    def test_incoming_not_delivered_again_after_a_restart(self):
        d = self.persistent_daemon()
        with d.client() as c:
            c.ok("subscribe", filter="in/#", qos=2)
            self.proxy.drop_up = {5}  # our PUBRECs are lost: the broker will send again
            for i in range(5):
                self.m.pub(f"in/{i}", str(i), qos=2)
            got = [c.event("message")["payload"] for _ in range(5)]
            self.assertEqual(sorted(got), [str(i) for i in range(5)])
        self.restart_after_kill(d)
        with d.client() as c:
            c.ok("subscribe", filter="in/#", qos=2)
            wait_until(lambda: c.ok("stats")["stats"]["duplicates_dropped"] >= 5,
                       what="the resent messages to be recognised")
            self.assertEqual(c.ok("stats")["stats"]["messages_received"], 0)
            self.m.pub("in/end", "end", qos=2)
            self.assertEqual(c.event("message")["payload"], "end")  # nothing before it


if __name__ == "__main__":
    main()

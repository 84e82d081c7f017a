#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""The durable spool: accepted QoS 1/2 messages survive kill -9, torn tails and restarts."""
import glob
import os
import signal
import subprocess

from harness import DAEMON, TestCase, main, wait_until


class Spool(TestCase):
    def spool_daemon(self, port, fsync="batch", **kw):
        self.spool_dir = os.path.join(self.tmp, "spool")
        return self.daemon(port, sections={"queue": {"spool_dir": self.spool_dir,
                                                     "fsync": fsync}}, **kw)

    def accept_offline(self, d, m, n, prefix="s"):
        """Stop the broker, have n QoS 1 messages accepted (wait: false), return them."""
        with d.client() as c:
            c.ok("events", connection=True)
            m.stop()
            c.event("disconnected")
            lines = "".join(
                f'{{"id":{i},"op":"publish","topic":"{prefix}/{i}","payload":"{i}","qos":1,'
                f'"wait":false}}\n' for i in range(n))
            c.send_raw(lines.encode())
            for _ in range(n):
                self.assertTrue(c.next(lambda x: "event" not in x)["ok"])
            self.assertEqual(c.ok("stats")["stats"]["spool_pending"], n)
        return [str(i) for i in range(n)]

    def test_kill_9_then_every_accepted_message_arrives(self):
        for mode in ("always", "batch", "never"):
            with self.subTest(fsync=mode):
                m = self.broker()
                d = self.spool_daemon(m.port, fsync=mode, name=f"d-{mode}")
                sent = self.accept_offline(d, m, 500, prefix=mode)
                d.stop(signal.SIGKILL)
                m.start()
                direct = self.direct_sub(m.port, f"{mode}/#")
                d.start()
                got = [direct.next()[1].decode() for _ in range(500)]
                self.assertEqual(got, sent)  # all of them, in order
                with d.client() as c:
                    wait_until(lambda: c.ok("stats")["stats"]["spool_pending"] == 0,
                               what="the spool to empty")
                self.assertIn("500 unacknowledged messages recovered", d.logtext())
                self.assertEqual(d.stop(), 0)

    def test_torn_tail_keeps_every_good_record(self):
        m = self.broker()
        d = self.spool_daemon(m.port, fsync="always")
        sent = self.accept_offline(d, m, 50)
        d.stop(signal.SIGKILL)
        seg = sorted(glob.glob(os.path.join(self.spool_dir, "seg-*.log")))[-1]
        size = os.path.getsize(seg)
        os.truncate(seg, size - 5)  # a write cut short by a power loss
        m.start()
        direct = self.direct_sub(m.port, "s/#")
        d.start()
        got = [direct.next()[1].decode() for _ in range(49)]
        self.assertEqual(got, sent[:49])
        self.assertIn("dropped a torn tail of", d.logtext())
        with d.client() as c:
            c.ok("publish", topic="s/after", payload="x", qos=1)
        self.assertEqual(direct.next()[1], b"x")  # nothing else (no message 49)

    def test_compaction_keeps_disk_use_small(self):
        m = self.broker()
        d = self.spool_daemon(m.port, fsync="never")
        with d.client() as c:
            payload = "p" * 200
            for start in range(0, 40000, 2000):
                c.send_raw("".join(
                    f'{{"id":{i},"op":"publish","topic":"c/{i}","payload":"{payload}",'
                    f'"qos":1}}\n' for i in range(start, start + 2000)).encode())
                for _ in range(2000):
                    self.assertTrue(c.next(lambda x: "event" not in x)["ok"])
            st = c.ok("stats")["stats"]
            self.assertEqual(st["spool_pending"], 0)
            # 40 000 x ~250 bytes went through; what is left is at most the open segment.
            self.assertLess(st["spool_bytes"], 5 * 1024 * 1024)
        files = glob.glob(os.path.join(self.spool_dir, "seg-*.log"))
        self.assertLessEqual(len(files), 2)

    def test_spool_is_exclusive(self):
        m = self.broker()
        d = self.spool_daemon(m.port)
        other = os.path.join(self.tmp, "other.conf")
        with open(d.conf) as f, open(other, "w") as o:
            o.write(f.read().replace(d.socket, d.socket + "2"))
        r = subprocess.run([DAEMON, "-c", other], capture_output=True, timeout=10)
        self.assertEqual(r.returncode, 1)
        self.assertIn(b"is in use by another process", r.stdout + r.stderr)


if __name__ == "__main__":
    main()

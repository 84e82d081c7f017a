#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Spool formats: a spool left by a format 1 daemon (the committed fixture) is delivered by this
one; a spool of a newer format is refused at start; a damaged segment loses only what the
damage hit and is set aside."""
import glob
import os
import shutil
import signal
import struct
import subprocess
import zlib

from harness import DAEMON, DirectSub, TestCase, main, wait_until

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "spool-v1")


def fixture_messages():
    """The pending messages of tests/fixtures/spool-v1 (its README): topic, payload, qos,
    retain, in order."""
    out = []
    for i in range(20):
        payload = f"message {i}".encode()
        if i == 7:
            payload = bytes([0, 1, 2, 0xff, 0xfe, 0x80, 0x0a])
        elif i == 13:
            payload = b""
        out.append((f"fixture/{i}", payload, 1 if i % 2 == 0 else 2, i % 5 == 0))
    return out


def record(body, salt=0):
    length = struct.pack("<I", len(body))
    return struct.pack("<I", zlib.crc32(length + body, salt)) + length + body


class SpoolFormat(TestCase):
    def spool_daemon(self, port, start=True, **kw):
        self.spool_dir = os.path.join(self.tmp, "spool")
        return self.daemon(port, sections={"queue": {"spool_dir": self.spool_dir,
                                                     "fsync": "batch"}}, start=start, **kw)

    def test_format_1_fixture_is_delivered(self):
        m = self.broker()
        d = self.spool_daemon(m.port, start=False)
        os.makedirs(self.spool_dir, mode=0o700)
        for seg in sorted(glob.glob(os.path.join(FIXTURE, "seg-*.log"))):
            shutil.copy(seg, self.spool_dir)
        sub = DirectSub(m.port, "fixture/#", qos=2)
        self.cleanups.append(sub.close)
        d.start()
        want = fixture_messages()
        got = [sub.next_qos(10) for _ in want]
        # All of them, each with its payload and QoS, in order within a QoS (MQTT orders
        # messages per QoS: the broker may pass a QoS 1 message before a QoS 2 one).
        got_by_topic = {t: (p, q) for t, p, q, _ in got}
        self.assertEqual(len(got_by_topic), len(want))
        self.assertEqual(got_by_topic, {t: (p, q) for t, p, q, _ in want})
        for qos in (1, 2):
            self.assertEqual([t for t, _, q, _ in got if q == qos],
                             [t for t, _, q, _ in want if q == qos])
        with self.assertRaises(OSError):  # nothing else: no acknowledged message comes back
            sub.next_qos(1.5)
        self.assertIn("20 unacknowledged messages recovered", d.logtext())
        with d.client() as c:
            wait_until(lambda: c.ok("stats")["stats"]["spool_pending"] == 0,
                       what="the spool to empty")
        # The retained ones are retained at the broker.
        late = DirectSub(m.port, "fixture/#", qos=2)
        self.cleanups.append(late.close)
        retained = sorted(late.next_qos(10)[0] for _ in range(4))
        self.assertEqual(retained, sorted(t for t, _, _, r in want if r))
        # Restarted: nothing is delivered again.
        self.assertEqual(d.stop(), 0)
        d.start()
        with self.assertRaises(OSError):
            sub.next_qos(1.5)

    def test_newer_format_is_refused(self):
        m = self.broker()
        d = self.spool_daemon(m.port, start=False)
        os.makedirs(self.spool_dir, mode=0o700)
        salt = 0x1234
        header = record(bytes([3]) + bytes(8) + b"MQBSPOOL" + struct.pack("<III", 5, salt, 0))
        add = record(bytes([1]) + struct.pack("<Q", 1) + bytes([1, 0]) + struct.pack("<HI", 1, 1)
                     + b"tx", salt)
        seg = os.path.join(self.spool_dir, "seg-0000000000000001.log")
        with open(seg, "wb") as f:
            f.write(header + add)
        r = subprocess.run([DAEMON, "-c", d.conf], capture_output=True, timeout=10)
        out = (r.stdout + r.stderr).decode()
        self.assertNotEqual(r.returncode, 0)
        self.assertIn(f"spool: {seg} was written by a newer mqttbridged (spool format 5); this "
                      "version reads formats 1 to 4: refusing to start rather than misread it",
                      out)
        with open(seg, "rb") as f:
            self.assertEqual(f.read(), header + add)  # untouched
        self.assertEqual(sorted(os.listdir(self.spool_dir)), ["lock", os.path.basename(seg)])

    def test_damage_loses_only_what_it_hit(self):
        m = self.broker()
        d = self.spool_daemon(m.port)
        with d.client() as c:
            c.ok("events", connection=True)
            m.stop()
            c.event("disconnected")
            c.send_raw("".join(
                f'{{"id":{i},"op":"publish","topic":"dmg/{i}","payload":"payload {i:03d}",'
                f'"qos":1,"wait":false}}\n' for i in range(300)).encode())
            for _ in range(300):
                self.assertTrue(c.next(lambda x: "event" not in x)["ok"])
        d.stop(signal.SIGKILL)
        seg = os.path.join(self.spool_dir, "seg-0000000000000001.log")
        with open(seg, "rb") as f:
            data = bytearray(f.read())
        # The records the 8 bytes in the middle hit (one, or two when they straddle).
        mid, off, hit, region = len(data) // 2, 0, [], []
        while off < len(data):
            end = off + 8 + struct.unpack_from("<I", data, off + 4)[0]
            if data[off + 8] == 1 and off < mid + 8 and end > mid:
                tn = struct.unpack_from("<H", data, off + 19)[0]
                hit.append(bytes(data[off + 25 + tn:end]).decode())
                region += [off, end]
            off = end
        self.assertIn(len(hit), (1, 2))
        data[mid:mid + 8] = bytes(b ^ 0x5a for b in data[mid:mid + 8])
        with open(seg, "wb") as f:
            f.write(data)
        m.start()
        sub = self.direct_sub(m.port, "dmg/#")
        d.start()
        got = [sub.next()[1].decode() for _ in range(300 - len(hit))]
        self.assertEqual(got, [f"payload {i:03d}" for i in range(300)
                               if f"payload {i:03d}" not in hit])  # exactly the rest, in order
        with self.assertRaises(OSError):
            sub.next(1.5)
        self.assertIn(f"seg-0000000000000001.log: damaged region at offset {region[0]} "
                      f"({region[-1] - region[0]} bytes) skipped: at least {len(hit)} record",
                      d.logtext())
        self.assertTrue(os.path.exists(os.path.join(self.spool_dir,
                                                    "damaged-seg-0000000000000001.log")))
        self.assertFalse(os.path.exists(seg))
        with d.client() as c:
            wait_until(lambda: c.ok("stats")["stats"]["spool_pending"] == 0,
                       what="the spool to empty")


if __name__ == "__main__":
    main()

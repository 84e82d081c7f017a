#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""mqttctl and the client examples against a real daemon and mosquitto."""
import json
import os
import signal
import subprocess
import time

from harness import MQTTCTL, TEST_PROTOCOL, WAIT, TestCase, main, wait_until

EXAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../clients/examples")


class Ctl(TestCase):
    """mqttctl against a daemon (self.d), run as a program."""

    def ctl(self, *args, input=None, check=None):
        r = subprocess.run([MQTTCTL, *args], input=input, capture_output=True, env=self.env,
                           timeout=WAIT * 3)
        if check is not None:
            self.assertEqual(r.returncode, check, r.stderr.decode())
        return r

    def sub_bg(self, *args):
        p = subprocess.Popen([MQTTCTL, "sub", *args], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env=self.env)
        # Subscribed once the daemon counts its subscription (two clients: it and us).
        with self.d.client() as c:
            wait_until(lambda: c.ok("status")["status"]["subscriptions"] >= 1,
                       what="mqttctl sub to subscribe")
        return p


class Mqttctl(Ctl):
    def setUp(self):
        super().setUp()
        self.m = self.broker()
        self.d = self.daemon(self.m.port)
        self.env = dict(os.environ, MQTTBRIDGE_SOCKET=self.d.socket)

    def test_status_and_json(self):
        out = self.ctl("status", check=0).stdout.decode()
        self.assertRegex(out, r"connected\s+yes, to 127\.0\.0\.1:%d" % self.m.port)
        self.assertRegex(out, r"last error\s+none")
        self.assertRegex(out, r"client id\s+mqttbridge-")
        if TEST_PROTOCOL == "3.1.1":
            self.assertRegex(out, r"mqtt\s+3\.1\.1\n")
        else:
            self.assertRegex(out, r"mqtt\s+5 \(broker: receive max \d+, max QoS 2, retain yes, "
                                  r"\d+ aliases")
        for args in (["--json", "status"], ["status", "--json"]):
            reply = json.loads(self.ctl(*args, check=0).stdout)
            self.assertTrue(reply["ok"])
            self.assertTrue(reply["status"]["connected"])

    def test_stats_table_and_reset(self):
        self.ctl("pub", "-t", "s/1", "-m", "x", "-q", "1", check=0)
        out = self.ctl("stats", check=0).stdout.decode().splitlines()
        table = dict(l.split() for l in out)
        for k in ("packets_sent", "bytes_received", "pub_ok_count", "pub_fail_count",
                  "pub_rtt_ms", "pub_package_avg_size", "sub_package_avg_size",
                  "connections_sent", "connections_failed", "ping_sent_count",
                  "ping_received_count", "ping_rtt_ms"):
            self.assertIn(k, table)
        self.assertEqual(table["pub_ok_count"], "1")
        # Aligned: the value column ends at the same place on every line.
        self.assertEqual(len({len(l) for l in out}), 1)
        self.assertEqual(self.ctl("stats", "--reset", check=0).stdout, b"statistics reset\n")
        st = json.loads(self.ctl("stats", "--json", check=0).stdout)["stats"]
        self.assertEqual(st["pub_ok_count"], 0)

    def test_pub_variants(self):
        direct = self.direct_sub(self.m.port, "p/#", qos=2)
        self.ctl("pub", "-t", "p/m", "-m", "hello", "-q", "2", check=0)
        self.assertEqual(direct.next(), ("p/m", b"hello", False))
        blob = bytes(range(256)) + b"\n\x00end"
        path = os.path.join(self.tmp, "blob")
        with open(path, "wb") as f:
            f.write(blob)
        self.ctl("pub", "-t", "p/f", "-f", path, "-q", "1", check=0)
        self.assertEqual(direct.next(), ("p/f", blob, False))
        self.ctl("pub", "-t", "p/n", "-n", check=0)
        self.assertEqual(direct.next(), ("p/n", b"", False))
        self.ctl("pub", "-t", "p/r", "-m", "kept", "-r", check=0)
        self.assertEqual(direct.next(), ("p/r", b"kept", False))
        late = self.direct_sub(self.m.port, "p/r")
        self.assertEqual(late.next(), ("p/r", b"kept", True))

    def test_pub_lines_10000(self):
        direct = self.direct_sub(self.m.port, "lines/t", qos=1)
        lines = "".join(f"line {i}\n" for i in range(10000)).encode()
        self.ctl("pub", "-t", "lines/t", "-l", "-q", "1", input=lines, check=0)
        got = [direct.next()[1] for _ in range(10000)]
        self.assertEqual(got, [f"line {i}".encode() for i in range(10000)])

    def test_pub_lines_past_the_write_buffer(self):
        """More than 256 KiB of requests queued at once (long lines at QoS 1): every line is
        sent. A release before this one stopped reading its input at that point (380 of
        3 000 arrived) and still exited 0."""
        direct = self.direct_sub(self.m.port, "long/t", qos=1)
        lines = [f"{i:05d} " + "x" * 400 for i in range(3000)]
        self.ctl("pub", "-t", "long/t", "-l", "-q", "1", input="\n".join(lines).encode() + b"\n",
                 check=0)
        got = [direct.next()[1].decode() for _ in range(3000)]
        self.assertEqual(got, lines)

    def test_pub_failures_reported_per_message(self):
        self.d.stop()
        self.d.write_config({**self.d.cfg, "queue": {"max_messages": "3"}})
        self.d.start()
        self.m.stop()
        r = self.ctl("--timeout", "0.5", "pub", "-t", "f/t", "-l", "-q", "1",
                     input=b"a\nb\nc\nd\ne\n")
        # Nothing is acknowledged while the broker is down: the first three wait in the
        # queue and time out (still queued), the last two are refused at once.
        self.assertEqual(r.returncode, 1)
        err = r.stderr.decode().splitlines()
        self.assertEqual(sorted(e.split(":")[1].strip() + ":" + e.split(":")[2] for e in err),
                         ["message 1: timeout", "message 2: timeout", "message 3: timeout",
                          "message 4: queue_full", "message 5: queue_full"])
        self.m.start()

    def test_sub_count_verbose_binary_json(self):
        p = self.sub_bg("-t", "c/#", "-C", "3", "-v")
        for i in range(3):
            self.ctl("pub", "-t", f"c/{i}", "-m", f"m{i}", "-q", "1", check=0)
        out, _ = p.communicate(timeout=WAIT)
        self.assertEqual(p.returncode, 0)
        self.assertEqual(out.decode().splitlines(), ["c/0 m0", "c/1 m1", "c/2 m2"])

        p = self.sub_bg("-t", "bin", "-C", "1")
        blob = bytes(range(256))
        path = os.path.join(self.tmp, "b")
        with open(path, "wb") as f:
            f.write(blob)
        self.ctl("pub", "-t", "bin", "-f", path, check=0)
        out, _ = p.communicate(timeout=WAIT)
        self.assertEqual(out, blob + b"\n")

        p = self.sub_bg("--json", "-t", "j", "-C", "1")
        self.ctl("pub", "-t", "j", "-m", "x", check=0)
        out, _ = p.communicate(timeout=WAIT)
        ev = json.loads(out.decode().splitlines()[-1])
        self.assertEqual((ev["event"], ev["topic"], ev["payload"]), ("message", "j", "x"))

    def test_sub_wait_and_signals(self):
        t0 = time.monotonic()
        r = self.ctl("sub", "-t", "never", "-C", "1", "-W", "1")
        self.assertEqual(r.returncode, 1)
        self.assertIn(b"timed out after 1 s (0 of 1 messages)", r.stderr)
        self.assertLess(time.monotonic() - t0, 5)
        p = self.sub_bg("-t", "sig")
        p.send_signal(signal.SIGINT)
        p.wait(timeout=WAIT)
        self.assertEqual(p.returncode, 0)
        # A closed pipe ends it too.
        p = subprocess.Popen(f"{MQTTCTL} sub -t pipe | head -n 1", shell=True,
                             stdout=subprocess.PIPE, env=self.env)
        with self.d.client() as c:
            wait_until(lambda: c.ok("status")["status"]["subscriptions"] >= 1)
            # head exits after the first line; mqttctl notices at its next write.
            for i in range(50):
                c.ok("publish", topic="pipe", payload=str(i), qos=1)
                try:
                    p.wait(timeout=0.2)
                    break
                except subprocess.TimeoutExpired:
                    pass
        out, _ = p.communicate(timeout=WAIT)
        self.assertEqual(out, b"0\n")

    def test_ping_admin_version(self):
        out = self.ctl("ping", check=0).stdout.decode()
        self.assertRegex(out, r"daemon round trip \d+\.\d+ ms")
        self.assertEqual(self.ctl("reconnect", check=0).stdout, b"reconnect: done\n")
        self.assertEqual(self.ctl("reload", check=0).stdout, b"reload: done\n")
        out = self.ctl("version", check=0).stdout.decode().splitlines()
        self.assertRegex(out[0], r"^mqttctl \d+\.\d+\.\d+$")
        self.assertRegex(out[1], r"^mqttbridged \d+\.\d+\.\d+$")

    def test_exit_codes(self):
        r = self.ctl("-s", os.path.join(self.tmp, "nope.sock"), "status")
        self.assertEqual(r.returncode, 3)
        self.assertEqual(r.stderr.decode().strip(),
                         f"mqttctl: cannot connect to {self.tmp}/nope.sock: No such file or "
                         "directory (is mqttbridged running?)")
        r = self.ctl("pub", "-t", "bad/#", "-m", "x")
        self.assertEqual(r.returncode, 1)
        self.assertIn(b"bad_request", r.stderr)
        for args in (["frobnicate"], ["pub", "-m", "x"], ["pub", "-t", "t"],
                     ["pub", "-t", "t", "-m", "x", "-q", "5"], ["sub"], ["status", "extra"],
                     []):
            self.assertEqual(self.ctl(*args).returncode, 2, args)
        self.assertEqual(self.ctl("--help", check=0).stdout[:6], b"Usage:")

    def test_examples(self):
        r = subprocess.run(["sh", os.path.join(EXAMPLES, "pubsub.sh"), self.d.socket],
                           capture_output=True, timeout=WAIT)
        self.assertEqual(r.returncode, 0, r.stderr)
        lines = [json.loads(l) for l in r.stdout.decode().splitlines()]
        self.assertEqual(lines[0]["granted_qos"], 1)
        self.assertIn({"event": "message", "topic": lines[1]["topic"], "payload": "hello from sh",
                       "qos": 1, "retain": False}, lines)
        r = subprocess.run(["/usr/bin/python3", os.path.join(EXAMPLES, "pubsub.py"),
                            self.d.socket], capture_output=True, timeout=WAIT)
        self.assertEqual(r.returncode, 0, r.stderr)
        out = r.stdout.decode().splitlines()
        self.assertTrue(out[0].startswith("subscribed to examples/python/"))
        self.assertEqual([l.split(": ")[1] for l in out[1:]],
                         ["message 0", "message 1", "message 2"])



class Mqttctl5(Ctl):
    """The MQTT 5 options, as mosquitto_pub, mosquitto_sub and mosquitto_rr spell them."""

    def setUp(self):
        super().setUp()
        self.m = self.broker()
        self.d = self.daemon(self.m.port, sections={"broker": {"protocol": "5"}})
        self.env = dict(os.environ, MQTTBRIDGE_SOCKET=self.d.socket)

    def test_properties_and_format(self):
        p = self.sub_bg("-t", "f/#", "-q", "1", "-C", "2", "-F", "%t|%p|%q|%r|%P|%%")
        self.ctl("pub", "-t", "f/1", "-m", "one", "-q", "1", "-D", "publish", "user-property",
                 "a", "1", "-D", "publish", "user-property", "a", "2", "-D", "publish",
                 "content-type", "text/plain", "-D", "publish", "message-expiry-interval", "60",
                 check=0)
        self.ctl("pub", "-t", "f/2", "-m", "two", check=0)
        out, _ = p.communicate(timeout=WAIT)
        self.assertEqual(out.decode().splitlines(), ["f/1|one|1|0|a:1 a:2|%", "f/2|two|0|0||%"])
        r = self.ctl("pub", "-t", "f", "-m", "x", "-D", "publish", "message-expiry-interval",
                     "soon")
        self.assertEqual(r.returncode, 2)
        self.assertIn("'soon' is not a valid value", r.stderr.decode())
        r = self.ctl("pub", "-t", "f", "-m", "x", "-D", "connect", "user-property", "a", "b")
        self.assertEqual(r.returncode, 2)
        r = self.ctl("pub", "-t", "f", "-m", "x", "-D", "publish", "user-property", b"\xff", "b")
        self.assertEqual(r.returncode, 2)
        self.assertIn("is not UTF-8", r.stderr.decode(errors="replace"))
        with self.d.client() as c:
            c.ok("subscribe", filter="cd", qos=1)
            self.ctl("pub", "-t", "cd", "-m", "x", "-q", "1", "-D", "publish", "correlation-data",
                     b"\xff\x00"[:1] + b"k", check=0)
            self.assertEqual(c.event("message")["correlation_data_b64"], "/2s=")

    def test_sub_options(self):
        self.m.pub("o/r", "kept", qos=1, retain=True)
        p = self.sub_bg("-t", "o/#", "-C", "1", "-v", "--nl", "--retain-handling", "2")
        self.ctl("pub", "-t", "o/mine", "-m", "not for --nl", "-q", "1", check=0)
        self.m.pub("o/theirs", "theirs", qos=1)
        out, _ = p.communicate(timeout=WAIT)
        self.assertEqual(out.decode().splitlines(), ["o/theirs theirs"])
        r = self.ctl("sub", "-t", "o/#", "--retain-handling", "3")
        self.assertEqual(r.returncode, 2)

    def test_rr(self):
        with self.d.client() as responder:
            responder.ok("subscribe", filter="svc/upper", qos=1)
            rr = subprocess.Popen([MQTTCTL, "rr", "-t", "svc/upper", "-m", "shout", "-q", "1",
                                   "-W", "5"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  env=self.env)
            e = responder.event("message")
            responder.ok("publish", topic=e["response_topic"], payload=e["payload"].upper(),
                         correlation_data=e["correlation_data"])
            out, err = rr.communicate(timeout=WAIT)
        self.assertEqual(rr.returncode, 0, err)
        self.assertEqual(out, b"SHOUT\n")
        with self.d.client() as c:
            c.ok("subscribe", filter="svc/silent")
            r = self.ctl("rr", "-t", "svc/silent", "-m", "x", "-W", "1")
        self.assertEqual(r.returncode, 1)
        self.assertIn("timeout", r.stderr.decode())


    def test_rr_examples(self):
        r = subprocess.run(["sh", os.path.join(EXAMPLES, "rr.sh"), self.d.socket],
                           capture_output=True, timeout=WAIT * 2,
                           env=dict(self.env, MQTTCTL=MQTTCTL))
        self.assertEqual(r.returncode, 0, r.stderr + r.stdout)
        out = r.stdout.decode().splitlines()
        self.assertEqual(out[0], "HELLO FROM MQTTCTL")
        self.assertEqual(json.loads(out[1])["response"]["payload"], "HELLO FROM SOCAT")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Fleet features (shared/spec/fleet.md) with the real daemon and mosquitto: the topic mount
point as an external client sees it."""
import os
import signal
import subprocess
import time

import shutil
import stat

import openmetrics
from harness import DAEMON, MQTTCTL, TEST_PROTOCOL, WAIT, Proxy, TestCase, main, wait_until

MOSQUITTO_PUB = "/usr/bin/mosquitto_pub"


class MountPoint(TestCase):
    def setUp(self):
        super().setUp()
        self.m = self.broker()
        self.d = self.daemon(self.m.port, sections={
            "broker": {"client_id": "box17"},
            "topics": {"mount": "fleet/%c/", "unmounted": "shared/#, $SYS/#"},
            "will": {"topic": "status", "message": "gone", "qos": "1"}})

    def external_pub(self, topic, message, retain=False):
        args = [MOSQUITTO_PUB, "-p", str(self.m.port), "-t", topic, "-m", message, "-q", "1"]
        subprocess.run(args + (["-r"] if retain else []), check=True, timeout=WAIT)

    def test_the_broker_sees_mounted_topics_and_programs_local_ones(self):
        ext = self.direct_sub(self.m.port, "fleet/#", "shared/#")
        with self.d.client() as c:
            c.ok("publish", topic="temp/k1", payload="21.5", qos=1)
            self.assertEqual(ext.next()[:2], ("fleet/box17/temp/k1", b"21.5"))
            c.ok("publish", topic="shared/y", payload="as is", qos=1)
            self.assertEqual(ext.next()[:2], ("shared/y", b"as is"))
            c.ok("subscribe", filter="cmd/#", qos=1)
            c.ok("subscribe", filter="#", qos=1)
            c.ok("subscribe", filter="shared/+", qos=1)
            self.external_pub("fleet/box18/cmd/x", "another box's")
            self.external_pub("fleet/box17/cmd/reboot", "now")
            e = c.event("message")
            self.assertEqual((e["topic"], e["payload"]), ("cmd/reboot", "now"))
            self.external_pub("shared/x", "unmounted")
            e = c.event("message")
            self.assertEqual((e["topic"], e["payload"]), ("shared/x", "unmounted"))
            c.ok("ping")
            self.assertEqual([x for x in c.events if x.get("event") == "message"], [])
            with self.d.client() as a:  # the broker holds the mounted filters
                self.assertEqual(a.ok("status")["status"]["subscriptions"], 3)

    def test_retained_and_shared_subscriptions(self):
        self.external_pub("fleet/box17/cfg/mode", "eco", retain=True)
        with self.d.client() as a, self.d.client() as b:
            a.ok("subscribe", filter="cfg/#", qos=1)
            e = a.event("message")
            self.assertEqual((e["topic"], e["payload"], e["retain"]), ("cfg/mode", "eco", True))
            a.ok("subscribe", filter="$share/g/work/#", qos=1)
            b.ok("subscribe", filter="$share/g/work/#", qos=1)
            for i in range(10):
                self.external_pub("fleet/box17/work/x", f"w{i}")
            # The group takes turns: each message reaches one of the two.
            got = [a.event("message")["payload"] for _ in range(5)]
            got += [b.event("message")["payload"] for _ in range(5)]
            self.assertEqual(sorted(got), sorted(f"w{i}" for i in range(10)))

    def test_the_will_is_mounted(self):
        ext = self.direct_sub(self.m.port, "fleet/box17/status")
        self.d.stop(signal.SIGKILL)
        self.assertEqual(ext.next()[:2], ("fleet/box17/status", b"gone"))

    def test_request_response_through_the_mount_point(self):
        if TEST_PROTOCOL == "3.1.1":
            self.skipTest("request needs MQTT 5")
        with self.d.client() as responder, self.d.client() as requester:
            responder.ok("subscribe", filter="svc/echo", qos=1)
            requester.send({"id": 7, "op": "request", "topic": "svc/echo", "payload": "hi",
                            "timeout_ms": 5000})
            q = responder.event("message")
            self.assertEqual(q["topic"], "svc/echo")
            self.assertFalse(q["response_topic"].startswith("fleet/"), q)  # a local topic
            responder.ok("publish", topic=q["response_topic"], payload="hi back",
                         correlation_data=q["correlation_data"])
            r = requester.next(lambda x: x.get("id") == 7)
            self.assertEqual(r["response"]["payload"], "hi back")


class RateLimit(TestCase):
    def test_200_a_second_paces_live_traffic_and_the_backlog(self):
        m = self.broker()
        proxy = Proxy(m.port)  # the link is cut here, the broker and its subscriber stay up
        self.cleanups.append(proxy.close)
        d = self.daemon(proxy.port, sections={"broker": {"max_publish_rate": "200",
                                                         "reconnect_min": "1",
                                                         "reconnect_max": "1"}})
        ext = self.direct_sub(m.port, "r/#")
        with d.client() as c:
            c.ok("events", connection=True)
            t0 = time.monotonic()
            for i in range(1000):
                c.send({"op": "publish", "topic": "r/x", "payload": str(i), "qos": 1,
                        "wait": False})
            got, slowest_ping, limited_seen = [], 0.0, False
            while len(got) < 1000:
                got.append(ext.next()[1].decode())
                if len(got) % 100 == 0:  # the daemon answers other ops meanwhile
                    p0 = time.monotonic()
                    limited_seen |= c.ok("status")["status"]["rate_limited"]
                    slowest_ping = max(slowest_ping, time.monotonic() - p0)
            took = time.monotonic() - t0
            self.assertEqual(got, [str(i) for i in range(1000)])  # none lost, in order
            # A bucket one second deep: 200 at once, then 200 a second.
            self.assertGreater(took, 3.5)
            self.assertLess(took, 15)
            self.assertTrue(limited_seen)
            self.assertLess(slowest_ping, 0.5)
            wait_ms = c.ok("stats")["stats"]["rate_limited_ms"]
            self.assertGreater(wait_ms, 3000)
            self.assertFalse(c.ok("status")["status"]["rate_limited"])
            # The backlog drained after a reconnect goes at the same pace. (The subscriber
            # stays connected: a restarted broker raced the daemon's reconnect, which full
            # jitter may make at once, and the subscriber then missed the first messages.)
            # Cut only once the broker acknowledged every one of the 1000: one still in flight
            # is sent again after the reconnect (QoS 1, at least once), ahead of the backlog.
            wait_until(lambda: c.ok("status")["status"]["inflight"] == 0, what="the last PUBACK")
            proxy.mode = "refuse"
            proxy.drop()
            c.event("disconnected", timeout=WAIT)
            for i in range(600):
                c.send({"op": "publish", "topic": "r/y", "payload": str(i), "qos": 1,
                        "wait": False})
            c.ok("ping")
            proxy.mode = "pass"
            first = ext.next()
            t1 = time.monotonic()
            rest = [ext.next()[1].decode() for _ in range(599)]
            self.assertEqual([first[1].decode()] + rest, [str(i) for i in range(600)])
            self.assertGreater(time.monotonic() - t1, 1.5)  # 200 at once, 400 at 200 a second
        print(f"\n1000 messages at max_publish_rate 200: {took:.1f} s at the subscriber, "
              f"slowest status meanwhile {slowest_ping * 1000:.0f} ms")


class Metrics(TestCase):
    def check_exposition(self, text):
        fams = openmetrics.parse(text)  # raises on anything the format does not allow
        self.assertEqual(fams["mqttbridge_publishes_completed_total"]["type"], "counter")
        self.assertEqual(fams["mqttbridge_queued_messages"]["type"], "gauge")
        for h in ("mqttbridge_publish_rtt_seconds", "mqttbridge_ping_rtt_seconds"):
            self.assertEqual(fams[h]["type"], "histogram")
        promtool = shutil.which("promtool")
        if promtool:
            r = subprocess.run([promtool, "check", "metrics"], input=text, text=True,
                               capture_output=True, timeout=WAIT)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        return fams

    def test_mqttctl_stats_openmetrics(self):
        m = self.broker()
        d = self.daemon(m.port, sections={"broker": {"keepalive": "1"}})
        with d.client() as c:
            for i in range(5):
                c.ok("publish", topic="m/x", payload="x", qos=1)
            c.ok("events", ping=True)
            c.event("ping", timeout=WAIT)  # a ping round trip is measured
        r = subprocess.run([MQTTCTL, "-s", d.socket, "stats", "--openmetrics"],
                           capture_output=True, text=True, timeout=WAIT)
        self.assertEqual(r.returncode, 0, r.stderr)
        fams = self.check_exposition(r.stdout)
        total = fams["mqttbridge_publishes_completed_total"]["samples"]
        self.assertEqual(total, [("mqttbridge_publishes_completed_total", {}, 5.0)])
        pub = dict((s[0], s[2]) for s in fams["mqttbridge_publish_rtt_seconds"]["samples"]
                   if s[0] != "mqttbridge_publish_rtt_seconds_bucket")
        self.assertEqual(pub["mqttbridge_publish_rtt_seconds_count"], 5.0)
        ping = fams["mqttbridge_ping_rtt_seconds"]["samples"]
        self.assertGreaterEqual(ping[-1][2], 1.0)  # _count

    def test_textfile_for_node_exporter(self):
        m = self.broker()
        prom = os.path.join(self.tmp, "collector", "mqttbridge.prom")
        os.makedirs(os.path.dirname(prom))
        old = os.umask(0o077)  # as under systemd's UMask=0077: node_exporter must read it still
        try:
            d = self.daemon(m.port, sections={"metrics": {"textfile": prom, "interval": "1"}})
        finally:
            os.umask(old)
        with d.client() as c:
            c.ok("publish", topic="m/x", payload="x", qos=1)

        def published():
            if not os.path.exists(prom):
                return False
            with open(prom) as f:
                fams = self.check_exposition(f.read())
            return fams["mqttbridge_publishes_completed_total"]["samples"][0][2] == 1.0
        wait_until(published, timeout=WAIT, what="the textfile with the publish")
        self.assertEqual(os.listdir(os.path.dirname(prom)), ["mqttbridge.prom"])  # no leftovers
        self.assertEqual(stat.S_IMODE(os.stat(prom).st_mode), 0o644)


class Top(TestCase):
    def top(self, d):
        r = subprocess.run([MQTTCTL, "-s", d.socket, "top", "--once"], capture_output=True,
                           text=True, timeout=WAIT)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertNotIn("\033", r.stdout)  # a plain frame: no terminal control codes
        return r.stdout.splitlines()

    def test_once_draws_what_the_daemon_keeps(self):
        m = self.broker()
        d = self.daemon(m.port)
        with d.client() as c:
            def busy():  # publishing until the daemon's rate (sampled each second) shows it
                for _ in range(20):
                    c.ok("publish", topic="t/x", payload="x", qos=1)
                return c.ok("stats")["stats"]["rates"]["messages_out_per_s"] > 0
            wait_until(busy, what="a publish rate")
            lines = self.top(d)
        self.assertRegex(lines[0], rf"^broker +connected to 127\.0\.0\.1:{m.port} for \d+s")
        out = float(lines[1].split("out ")[1])
        self.assertGreater(out, 0)
        self.assertRegex(lines[2], r"^queue +queued 0 +in flight 0 +rate limited no$")
        self.assertRegex(lines[3], r"^local +clients 2 +subscriptions 0 +sessions 0$")  # c, top
        self.assertRegex(lines[4], r"^publish rtt p50 \d+ ms +p90 \d+ ms +p99 \d+ ms$")
        self.assertRegex(lines[5], r"^ping rtt +p50 - +p90 - +p99 -$")  # no ping yet
        with d.client() as c:
            c.ok("events", connection=True)
            m.stop()
            c.event("disconnected", timeout=WAIT)
        self.assertRegex(self.top(d)[0], r"^broker +NOT connected \((idle|connecting)\)")


SOFTHSM = "/usr/lib/softhsm/libsofthsm2.so"


class TokenKey(TestCase):
    """Mutual TLS with the client key in a PKCS#11 token (SoftHSM2): made in the token from the
    test CA's client key, never read from a file by the daemon."""

    def setUp(self):
        super().setUp()
        if not os.path.exists(SOFTHSM) or not shutil.which("softhsm2-util"):
            self.skipTest("SoftHSM2 is not installed (scripts/deps installs softhsm2)")
        import certs
        self.certs = certs.make(os.path.join(self.tmp, "certs"))
        tokens = os.path.join(self.tmp, "tokens")
        os.makedirs(tokens)
        conf = os.path.join(self.tmp, "softhsm2.conf")
        with open(conf, "w") as f:
            f.write(f"directories.tokendir = {tokens}\nobjectstore.backend = file\n")
        os.environ["SOFTHSM2_CONF"] = conf  # the daemon's module reads it too
        self.cleanups.append(lambda: os.environ.pop("SOFTHSM2_CONF", None))

        def hsm(*args):
            subprocess.run(["softhsm2-util", *args], check=True, capture_output=True,
                           timeout=WAIT)
        hsm("--init-token", "--free", "--label", "edge", "--pin", "1234", "--so-pin", "5678")
        p8 = os.path.join(self.tmp, "client.p8")
        subprocess.run(["openssl", "pkcs8", "-topk8", "-nocrypt", "-in",
                        f"{self.certs}/client.key", "-out", p8], check=True, timeout=WAIT)
        hsm("--import", p8, "--token", "edge", "--label", "device-key", "--id", "01",
            "--pin", "1234")
        os.unlink(p8)
        self.pin = os.path.join(self.tmp, "pin")
        with open(self.pin, "w") as f:
            f.write("1234\n")
        os.chmod(self.pin, 0o600)

    def tls(self, port, key="pkcs11:token=edge;object=device-key", pin=None, module=SOFTHSM,
            name="d"):
        tls = {"enabled": "true", "ca_file": f"{self.certs}/ca.crt",
               "cert_file": f"{self.certs}/client.crt", "key_file": key,
               "pkcs11_module": module, "pin_file": pin or self.pin}
        return self.daemon(port, sections={"broker": {"host": f"localhost:{port}"},
                                           "tls": tls}, start=False, name=name)

    def test_mutual_tls_with_the_key_in_the_token(self):
        c = self.certs
        m = self.broker(extra=f"cafile {c}/ca.crt\ncertfile {c}/server.crt\n"
                              f"keyfile {c}/server.key\nrequire_certificate true")
        for key in ("pkcs11:token=edge;object=device-key", "pkcs11:token=edge;id=%01"):
            d = self.tls(m.port, key=key, name=f"d{len(key)}")
            d.start()
            with d.client() as cl:
                cl.ok("publish", topic="token", payload="signed in the token", qos=1)
                # The next link signs with the token again, after a reload too (which keeps
                # the token: a module loads once per process).
                cl.ok("reload")
                cl.ok("reconnect")
                cl.wait_connected()
                cl.ok("publish", topic="token", payload="after a reload", qos=1)
            self.assertEqual(d.stop(), 0)
        # A changed PIN file needs a restart: the reload says so and keeps the old setting.
        d = self.tls(m.port, name="changed")
        d.start()
        other_pin = os.path.join(self.tmp, "pin2")
        shutil.copy(self.pin, other_pin)
        with open(d.conf) as f:
            text = f.read()
        with open(d.conf, "w") as f:
            f.write(text.replace(self.pin, other_pin))
        with d.client() as cl:
            r = cl.request("reload")
            self.assertFalse(r["ok"])
            self.assertIn("restart the daemon", r["error"]["message"])
            cl.ok("publish", topic="token", payload="still signed", qos=1)
        self.assertEqual(d.stop(), 0)

    def test_wrong_pin_missing_object_and_module_are_named(self):
        bad_pin = os.path.join(self.tmp, "bad-pin")
        with open(bad_pin, "w") as f:
            f.write("0000\n")
        os.chmod(bad_pin, 0o600)
        cases = [({"pin": bad_pin}, "cannot log in to PKCS#11 token 'edge'"),
                 ({"key": "pkcs11:token=edge;object=nothing"}, "the token has no private key"),
                 ({"module": "/nonexistent/libpkcs11.so"}, "cannot load the PKCS#11 module"),
                 ({"key": "pkcs11:token=edge;colour=red"}, "unknown attribute 'colour'")]
        for i, (args, why) in enumerate(cases):
            d = self.tls(1, name=f"bad{i}", **args)
            r = subprocess.run([DAEMON, "--check-config", "-c", d.conf], capture_output=True,
                               text=True, timeout=WAIT)
            self.assertEqual(r.returncode, 1, why)
            self.assertIn(why, r.stderr)


class Configuration(TestCase):
    def check(self, **topics):
        conf = os.path.join(self.tmp, "bad.conf")
        with open(conf, "w") as f:
            f.write("[broker]\nhost = 127.0.0.1\n[topics]\n")
            for k, v in topics.items():
                f.write(f"{k} = {v}\n")
        return subprocess.run([DAEMON, "--check-config", "-c", conf], capture_output=True,
                              text=True, timeout=WAIT)

    def test_bad_mount_points_are_named(self):
        for value, why in (("a/+/", "without '+', '#'"), ("a/#/", "without '+', '#'"),
                           ("devices/%x/", "unknown escape '%x'"),
                           ("devices/%h", "ending in '/'")):
            r = self.check(mount=value)
            self.assertEqual(r.returncode, 1, value)
            self.assertIn("bad.conf:4: ", r.stderr, value)
            self.assertIn(why, r.stderr, value)
        r = self.check(unmounted="ok/#, bad/#/x")
        self.assertEqual(r.returncode, 1)
        self.assertIn("not valid", r.stderr)
        self.assertEqual(self.check(mount="devices/%h/%c/").returncode, 0)

    def test_bad_rates_are_named(self):
        conf = os.path.join(self.tmp, "rate.conf")
        for value in ("-5", "fast", "1.5"):
            with open(conf, "w") as f:
                f.write(f"[broker]\nhost = 127.0.0.1\nmax_publish_rate = {value}\n")
            r = subprocess.run([DAEMON, "--check-config", "-c", conf], capture_output=True,
                               text=True, timeout=WAIT)
            self.assertEqual(r.returncode, 1, value)
            self.assertIn("rate.conf:3: max_publish_rate must be a whole number", r.stderr)

    def test_a_textfile_in_a_missing_directory_is_named(self):
        conf = os.path.join(self.tmp, "m.conf")
        with open(conf, "w") as f:
            f.write("[broker]\nhost = 127.0.0.1\n[metrics]\ntextfile = /nonexistent/dir/x.prom\n")
        r = subprocess.run([DAEMON, "--check-config", "-c", conf], capture_output=True,
                           text=True, timeout=WAIT)
        self.assertEqual(r.returncode, 1)
        self.assertIn("m.conf:4: textfile: the directory /nonexistent/dir does not exist",
                      r.stderr)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""TLS to the broker: verification, mutual TLS, versions, and the errors a person sees."""
import os
import shutil
import signal
import tempfile

import certs
from harness import Proxy, TestCase, main, wait_until

CERTS = None


def setUpModule():
    global CERTS
    CERTS = certs.make(tempfile.mkdtemp(prefix="mqttbridge-certs-"))


def tearDownModule():
    shutil.rmtree(CERTS, ignore_errors=True)


def tls_listener(cert="server", require_cert=False, version=None):
    c = CERTS
    lines = [f"cafile {c}/ca.crt", f"certfile {c}/{cert}.crt", f"keyfile {c}/{cert}.key"]
    if require_cert:
        lines.append("require_certificate true")
    if version:
        lines.append(f"tls_version {version}")
    return "\n".join(lines)


def maps_wolfssl(pid):
    with open(f"/proc/{pid}/maps") as f:
        text = f.read()
    return "/libwolfssl.so" in text and "/mqttbridge-tls.so" in text


class Tls(TestCase):
    def tls_daemon(self, port, name="d", **tls):
        cfg = {"enabled": "true", "ca_file": f"{CERTS}/ca.crt", **tls}
        d = self.daemon(port, sections={"broker": {"host": f"localhost:{port}"}, "tls": cfg},
                        start=False, name=name)
        return d

    def last_error(self, d):
        with d.client() as c:
            return wait_until(lambda: c.ok("status")["status"]["last_error"],
                              what="a connection error")

    def test_verified_round_trip(self):
        m = self.broker(extra=tls_listener())
        d = self.tls_daemon(m.port)
        d.start()
        with d.client() as c:
            st = c.ok("status")["status"]
            self.assertTrue(st["tls"])
            self.assertIn(st["tls_version"], ("TLSv1.2", "TLSv1.3"))
            self.assertTrue(st["tls_cipher"])
            c.ok("subscribe", filter="tls/#", qos=1)
            c.ok("publish", topic="tls/a", payload="secret", qos=1)
            self.assertEqual(c.event("message")["payload"], "secret")
        self.assertTrue(maps_wolfssl(d.proc.pid))

    def test_wolfssl_only_with_tls(self):
        # The TLS module and wolfSSL (with libm) are loaded only when [tls] is enabled.
        m = self.broker()
        d = self.daemon(m.port)
        with d.client() as c:
            self.assertFalse(c.ok("status")["status"]["tls"])
        self.assertFalse(maps_wolfssl(d.proc.pid))

    def test_a_module_of_another_build_is_refused(self):
        import subprocess
        from harness import DAEMON
        alone = os.path.join(self.tmp, "bin")
        os.makedirs(alone)
        shutil.copy(DAEMON, alone)
        src = os.path.join(self.tmp, "old.c")
        with open(src, "w") as f:  # the table's first fields, as another release has them
            f.write('#include <stddef.h>\n'
                    'struct t { const char *v; size_t size, config_size; void *fn[12]; };\n'
                    '__attribute__((visibility("default"))) const struct t '
                    'mqttbridge_tls_module = {"0.0.1", sizeof(struct t), 1};\n')
        subprocess.run(["cc", "-shared", "-fPIC", "-o",
                        os.path.join(alone, "mqttbridge-tls.so"), src], check=True)
        d = self.tls_daemon(1)
        r = subprocess.run([os.path.join(alone, os.path.basename(DAEMON)), "--check-config",
                            "-c", d.conf], capture_output=True, text=True)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("is not the TLS module of this mqttbridged", r.stderr)
        self.assertIn("another release", r.stderr)

    def test_missing_tls_module_is_named(self):
        import subprocess
        from harness import DAEMON
        alone = os.path.join(self.tmp, "bin")
        os.makedirs(alone)
        shutil.copy(DAEMON, alone)  # no module beside it: the installed one is looked for
        d = self.tls_daemon(1)
        r = subprocess.run([os.path.join(alone, os.path.basename(DAEMON)), "--check-config",
                            "-c", d.conf], capture_output=True, text=True)
        if r.returncode == 0:
            self.skipTest("a TLS module is installed where this build looks for one")
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("cannot load the TLS module", r.stderr)
        self.assertIn("/mqttbridge/mqttbridge-tls.so", r.stderr)

    def test_bursts_of_small_and_large_records(self):
        """Many acknowledgements arrive in one read (several records in the daemon's read-ahead)
        and large messages span records and reads: each arrives once, whole and in order."""
        m = self.broker(extra=tls_listener())
        d = self.tls_daemon(m.port)
        d.start()
        sizes = [1, 5, 16 * 1024 - 40, 16 * 1024 + 1, 100 * 1000] + [20] * 995
        with d.client() as c:
            c.ok("subscribe", filter="big/#", qos=1)
            c.send_raw("".join(
                f'{{"id":{i},"op":"publish","topic":"big/{i}","payload":"{chr(97 + i % 26) * n}",'
                f'"qos":1,"wait":false}}\n' for i, n in enumerate(sizes)).encode())
            got = c.messages(len(sizes), timeout=30)
            self.assertEqual([e["topic"] for e in got], [f"big/{i}" for i in range(len(sizes))])
            for i, e in enumerate(got):
                self.assertEqual(e["payload"], chr(97 + i % 26) * sizes[i], f"message {i}")

    def test_reconnect_resumes_the_session(self):
        """After a cut link the daemon offers the broker the last session's ticket: the
        handshake is resumed (no certificates). A restarted broker has new ticket keys: a full
        handshake then, and the link still comes up."""
        m = self.broker(extra=tls_listener())
        proxy = Proxy(m.port)
        self.cleanups.append(proxy.close)
        d = self.tls_daemon(proxy.port)
        d.start()
        with d.client() as c:
            c.ok("events", connection=True)
            self.assertIs(c.ok("status")["status"]["tls_resumed"], False)
            c.ok("subscribe", filter="res/#", qos=1)
            for n in range(2):  # a second resumption: the resumed link's own ticket works too
                proxy.drop()
                c.event("disconnected")
                c.event("connected", timeout=10)
                self.assertIs(c.ok("status")["status"]["tls_resumed"], True, f"cut {n + 1}")
            c.ok("publish", topic="res/a", payload="again", qos=1)
            self.assertEqual(c.event("message")["payload"], "again")
            m.stop()
            c.event("disconnected")
            m.start()
            c.event("connected", timeout=10)
            self.assertIs(c.ok("status")["status"]["tls_resumed"], False)

    def test_unknown_ca(self):
        m = self.broker(extra=tls_listener())
        d = self.tls_daemon(m.port, ca_file=f"{CERTS}/other-ca.crt")
        d.start(wait_connected=False)
        err = self.last_error(d)
        self.assertIn("signed by an unknown CA", err)
        self.assertTrue(err.startswith(f"TLS handshake with 127.0.0.1:{m.port} failed"))

    def test_host_name_mismatch(self):
        m = self.broker(extra=tls_listener())
        d = self.tls_daemon(m.port, server_name="broker.wrong.example")
        d.start(wait_connected=False)
        self.assertIn("does not match the host name", self.last_error(d))

    def test_expired_certificate(self):
        m = self.broker(extra=tls_listener(cert="expired"))
        d = self.tls_daemon(m.port)
        d.start(wait_connected=False)
        self.assertIn("certificate has expired", self.last_error(d))

    def test_verify_off_connects_and_warns(self):
        m = self.broker(extra=tls_listener())
        d = self.tls_daemon(m.port, ca_file=f"{CERTS}/other-ca.crt", verify="false")
        d.start()
        self.assertIn("TLS certificate verification is OFF", d.logtext())

    def test_mutual_tls(self):
        m = self.broker(extra=tls_listener(require_cert=True))
        d = self.tls_daemon(m.port, name="without")
        d.start(wait_connected=False)
        self.assertIn("requires a client certificate", self.last_error(d))
        self.assertEqual(d.stop(), 0)
        d2 = self.tls_daemon(m.port, name="with", cert_file=f"{CERTS}/client.crt",
                             key_file=f"{CERTS}/client.key")
        d2.start()
        with d2.client() as c:
            c.ok("publish", topic="mtls", payload="x", qos=1)

    def test_tls13_only(self):
        m = self.broker(extra=tls_listener(version="tlsv1.3"))
        d = self.tls_daemon(m.port, min_version="1.3")
        d.start()
        with d.client() as c:
            self.assertEqual(c.ok("status")["status"]["tls_version"], "TLSv1.3")
        # min_version 1.2 (the default) negotiates 1.3 with a 1.3-only broker.
        d12 = self.tls_daemon(m.port, name="d12", min_version="1.2")
        d12.start()
        with d12.client() as c:
            self.assertEqual(c.ok("status")["status"]["tls_version"], "TLSv1.3")

    def test_wrong_port_kinds_fail_fast_and_back_off(self):
        tls_broker = self.broker(extra=tls_listener())
        plain = self.daemon(tls_broker.port, name="plain", start=False)
        plain.start(wait_connected=False)
        err = self.last_error(plain)
        self.assertIn("before CONNACK (a TLS port? see [tls] enabled)", err)
        with plain.client() as c:
            st = c.ok("status")["status"]
            self.assertFalse(st["connected"])
            self.assertIsInstance(st["next_retry_ms"], int)
        plain_broker = self.broker()
        tls = self.tls_daemon(plain_broker.port, name="tls")
        tls.start(wait_connected=False)
        err = self.last_error(tls)
        self.assertRegex(err, "TLS handshake with .* failed: .*(TLS port|plain MQTT port|TLS error)")
        with tls.client() as c:
            wait_until(lambda: c.ok("stats")["stats"]["connections_failed"] >= 2,
                       what="a second attempt after backoff")
        self.assertTrue(plain.alive() and tls.alive())

    def test_keepalive_reconnect_qos1_over_tls(self):
        m = self.broker(extra=tls_listener())
        d = self.tls_daemon(m.port)
        d.cfg["broker"]["keepalive"] = "1"
        d.write_config(d.cfg)
        d.start()
        with d.client() as c:
            c.ok("events", ping=True, connection=True)
            self.assertGreaterEqual(c.event("ping", timeout=5)["rtt_ms"], 0)
            c.ok("subscribe", filter="r/#", qos=1)
            m.stop()
            c.event("disconnected")
            for i in range(20):
                c.ok("publish", topic=f"r/{i}", payload=str(i), qos=1, wait=False)
            m.start()
            c.event("connected")
            got = sorted(int(e["payload"]) for e in c.messages(20))
            self.assertEqual(got, list(range(20)))

    def test_bad_tls_files_stop_start_up(self):
        import subprocess
        from harness import DAEMON
        d = self.tls_daemon(1, cert_file="/nonexistent.crt", key_file=f"{CERTS}/client.key")
        r = subprocess.run([DAEMON, "--check-config", "-c", d.conf], capture_output=True)
        self.assertEqual(r.returncode, 1)
        self.assertIn(b"cannot load the client certificate /nonexistent.crt", r.stderr)

    def test_handshake_timeout(self):
        def silent(conn, fb):  # accepts TCP, never answers the ClientHello
            with fb.lock:
                fb.connects.append((0, b""))
                fb.lock.notify_all()
            while conn.recv(4096):
                pass
        fb = self.fake_broker(silent)
        d = self.tls_daemon(fb.port)
        d.cfg["broker"]["connect_timeout"] = "1"
        d.write_config(d.cfg)
        d.start(wait_connected=False)
        self.assertEqual(self.last_error(d),
                         f"connect timeout (1000 ms): TLS handshake with 127.0.0.1:{fb.port}")
        fb.wait_connects(2)  # and it tries again
        self.assertTrue(d.alive())

    def test_rotated_certificate_used_at_next_connect(self):
        m = self.broker(extra=tls_listener(require_cert=True))
        cert = os.path.join(self.tmp, "client.crt")
        key = os.path.join(self.tmp, "client.key")
        shutil.copy(f"{CERTS}/client.crt", cert)
        shutil.copy(f"{CERTS}/client.key", key)
        d = self.tls_daemon(m.port, cert_file=cert, key_file=key)
        d.start()
        with d.client() as c:
            # Rotated on disk to a certificate the broker refuses: used at the next connect.
            shutil.copy(f"{CERTS}/expired.crt", cert)
            shutil.copy(f"{CERTS}/expired.key", key)
            os.chmod(key, 0o600)
            c.ok("reconnect")
            wait_until(lambda: c.ok("status")["status"]["last_error"], what="the refusal")
            # And back to a good one: connected again without a restart.
            shutil.copy(f"{CERTS}/client.crt", cert)
            shutil.copy(f"{CERTS}/client.key", key)
            wait_until(lambda: c.ok("status")["status"]["connected"], what="reconnection")


if __name__ == "__main__":
    main()

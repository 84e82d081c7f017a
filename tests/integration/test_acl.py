#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Access control by peer credentials: children drop to other uids/gids, then talk to the
daemon; each rule kind allows and denies as configured."""
import grp
import json
import os
import pwd
import signal
import socket
import subprocess
import time

from harness import DAEMON, WAIT, Client, TestCase, free_port, main, wait_until

USER, GROUP = "mbtest", "mbtestgrp"
NAMELESS = 54321  # a uid (and gid) with no passwd entry


def setUpModule():
    # A test user and group (root is needed anyway to change uid).
    if subprocess.run(["getent", "group", GROUP], capture_output=True).returncode != 0:
        subprocess.run(["groupadd", "--system", GROUP], check=True)
    if subprocess.run(["getent", "passwd", USER], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell",
                        "/usr/sbin/nologin", "-G", GROUP, USER], check=True)


def as_peer(sock, uid, gid, groups, requests):
    """Connect as uid/gid in a child process; return the replies to `requests`
    (a list of (op, fields)) and whatever events arrived before each reply."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        out = []
        try:
            os.setgroups(groups)
            os.setgid(gid)
            os.setuid(uid)
            with Client(sock) as c:
                for op, fields in requests:
                    out.append(c.request(op, **fields))
                out.append({"events": c.events})
        except Exception as e:  # report, never hang the parent
            out.append({"exception": repr(e)})
        os.write(w, json.dumps(out).encode())
        os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 1 << 16):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    return json.loads(data)


def syn_sent_to(port):
    """Whether some socket here is waiting for the SYN-ACK of 127.0.0.1:port."""
    with open("/proc/net/tcp") as f:
        for line in f.read().splitlines()[1:]:
            fields = line.split()
            if fields[2] == f"0100007F:{port:04X}" and fields[3] == "02":
                return True
    return False


def client_hello_sni(conn):
    """The server name of the TLS ClientHello arriving on conn (None without SNI)."""
    def exact(n):
        data = b""
        while len(data) < n:
            chunk = conn.recv(n - len(data))
            if not chunk:
                raise EOFError("closed before the ClientHello")
            data += chunk
        return data
    head = exact(5)
    assert head[0] == 0x16, f"not a TLS handshake record: {head!r}"
    body = exact(int.from_bytes(head[3:5], "big"))
    assert body[0] == 1, "not a ClientHello"
    i = 4 + 2 + 32  # handshake header, version, random
    i += 1 + body[i]  # session id
    i += 2 + int.from_bytes(body[i:i + 2], "big")  # cipher suites
    i += 1 + body[i]  # compression methods
    end = i + 2 + int.from_bytes(body[i:i + 2], "big")
    i += 2
    while i + 4 <= end:
        kind, n = int.from_bytes(body[i:i + 2], "big"), int.from_bytes(body[i + 2:i + 4], "big")
        ext = body[i + 4:i + 4 + n]
        if kind == 0:  # server_name: list length, name type, name length, name
            return ext[5:5 + int.from_bytes(ext[3:5], "big")].decode()
        i += 4 + n
    return None


class Acl(TestCase):
    def setUp(self):
        super().setUp()
        self.user = pwd.getpwnam(USER)
        self.group = grp.getgrnam(GROUP)
        self.m = self.broker()

    def acl_daemon(self, rules):
        d = self.daemon(self.m.port, sections={"acl": rules, "ipc": {"mode": "0666"}},
                        start=False)
        # [acl] keys repeat ("allow all" twice): write that section by hand.
        with open(d.conf) as f:
            text = f.read().split("[acl]")[0]
        with open(d.conf, "w") as f:
            f.write(text + "[acl]\n" + "".join(f"{k} = {v}\n" for k, v in rules) +
                    "[ipc]\nmode = 0666\n")
        d.start()
        return d

    def run_as(self, d, who, requests):
        if who == "mbtest":
            return as_peer(d.socket, self.user.pw_uid, self.user.pw_gid, [self.group.gr_gid],
                           requests)
        return as_peer(d.socket, 65534, 65534, [], requests)

    def codes(self, replies):
        return [r.get("error", {}).get("code", "ok") for r in replies if "events" not in r]

    def test_no_rules_open_but_no_admin(self):
        d = self.acl_daemon([("max_connections_per_uid", "10")])
        out = self.run_as(d, "nobody", [("publish", {"topic": "any/x", "payload": "1", "qos": 1}),
                                      ("subscribe", {"filter": "#"}),
                                      ("reconnect", {}), ("stats_reset", {}), ("reload", {}),
                                      ("status", {}), ("stats", {})])
        self.assertEqual(self.codes(out), ["ok", "ok", "forbidden", "forbidden", "forbidden",
                                           "ok", "ok"])
        self.assertNotIn("clients", out[5]["status"])  # not for ordinary peers
        with d.client() as c:  # root is an admin and sees who is connected
            self.assertIsInstance(c.ok("status")["status"]["clients"], list)

    def test_rule_kinds_and_substitution(self):
        d = self.acl_daemon([
            ("allow user " + USER, "pubsub apps/%u/#"),
            ("allow group " + GROUP, "publish sensors/#"),
            (f"allow uid 65534", "subscribe public/#"),
            ("allow gid 65534", "publish nobody/out"),
            ("allow all", "subscribe news/#"),
            ("deny all", "publish sensors/secret"),
        ])
        out = self.run_as(d, "mbtest", [
            ("publish", {"topic": f"apps/{USER}/x", "payload": "1"}),
            ("publish", {"topic": "apps/other/x", "payload": "1"}),
            ("subscribe", {"filter": f"apps/{USER}/#"}),
            ("subscribe", {"filter": "apps/#"}),
            ("publish", {"topic": "sensors/t", "payload": "1"}),
            ("publish", {"topic": "sensors/secret", "payload": "1"}),
            ("subscribe", {"filter": "news/today"}),
            ("subscribe", {"filter": "public/#"}),
        ])
        self.assertEqual(self.codes(out), ["ok", "forbidden", "ok", "forbidden", "ok",
                                           "forbidden", "ok", "forbidden"])
        self.assertEqual(out[5]["error"]["message"],
                         "denied by [acl] rule 'deny all = publish sensors/secret'")
        self.assertEqual(out[1]["error"]["message"],
                         "no [acl] rule allows this peer to publish to apps/other/x")
        out = self.run_as(d, "nobody", [
            ("subscribe", {"filter": "public/a"}),
            ("publish", {"topic": "nobody/out", "payload": "1"}),
            ("publish", {"topic": "apps/nobody/x", "payload": "1"}),
            ("publish", {"topic": "sensors/t", "payload": "1"}),
        ])
        self.assertEqual(self.codes(out), ["ok", "ok", "forbidden", "forbidden"])

    def test_forbidden_data_never_reaches_the_client(self):
        d = self.acl_daemon([("allow user " + USER, "subscribe mine/#")])
        with d.client() as root:
            # Being an admin does not exempt root from the topic rules.
            r = root.request("subscribe", filter="#")
            self.assertEqual(r["error"]["code"], "forbidden")

    def test_admin_entries_and_limits(self):
        d = self.acl_daemon([("admin", f"user:{USER}"), ("max_connections_per_uid", "2"),
                             ("max_subscriptions_per_uid", "2")])
        out = self.run_as(d, "mbtest", [("reconnect", {}),
                                      ("subscribe", {"filter": "a"}),
                                      ("subscribe", {"filter": "b"}),
                                      ("subscribe", {"filter": "c"})])
        self.assertEqual(self.codes(out), ["ok", "ok", "ok", "forbidden"])
        self.assertIn("max_subscriptions_per_uid = 2", out[3]["error"]["message"])
        # Connections: two held by root, the third is told why and closed.
        a, b = d.client(), d.client()
        a.ok("ping"), b.ok("ping")
        with d.client() as c:
            r = c.next()
            self.assertEqual(r["error"]["code"], "forbidden")
            self.assertIn("max_connections_per_uid = 2", r["error"]["message"])
        a.close(), b.close()

    def test_reload_changes_decisions_for_open_connections(self):
        d = self.acl_daemon([("allow all", "pubsub room/#")])
        r, w = os.pipe()
        go_r, go_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # nobody holds a subscription across the reload
            os.close(r), os.close(go_w)
            out = []
            try:
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
                with Client(d.socket) as c:
                    out.append(c.request("subscribe", filter="room/#"))
                    os.write(w, b"x")
                    os.read(go_r, 1)  # the parent reloads meanwhile
                    out.append(c.event("unsubscribed"))
                    out.append(c.request("publish", topic="room/1", payload="x"))
            except Exception as e:
                out.append({"exception": repr(e)})
            os.write(w, json.dumps(out).encode())
            os._exit(0)
        os.close(w), os.close(go_r)
        self.assertEqual(os.read(r, 1), b"x")
        with open(d.conf) as f:
            text = f.read().replace("allow all = pubsub room/#", "allow all = pubsub hall/#")
        with open(d.conf, "w") as f:
            f.write(text)
        with d.client() as c:
            c.ok("reload")
        os.write(go_w, b"g")
        data = b""
        while chunk := os.read(r, 1 << 16):
            data += chunk
        os.waitpid(pid, 0)
        out = json.loads(data)
        self.assertEqual(out[0]["granted_qos"], 0)
        self.assertEqual(out[1]["filter"], "room/#")
        self.assertIn("no [acl] rule allows", out[1]["reason"])
        self.assertEqual(out[2]["error"]["code"], "forbidden")

    def test_uid_without_a_name_hits_u_deny_rules(self):
        self.assertNotEqual(subprocess.run(["getent", "passwd", str(NAMELESS)],
                                           capture_output=True).returncode, 0)
        d = self.acl_daemon([
            ("allow all", "pubsub home/#"),
            ("deny all", "pubsub home/%u/#"),
            ("allow all", "publish own/%u"),
        ])
        out = as_peer(d.socket, NAMELESS, NAMELESS, [], [
            ("publish", {"topic": "home/bob/x", "payload": "1"}),
            ("subscribe", {"filter": "home/+/x"}),
            ("subscribe", {"filter": "home/#"}),
            ("publish", {"topic": "own/x", "payload": "1"}),
            ("publish", {"topic": "home", "payload": "1"}),
        ])
        self.assertEqual(self.codes(out), ["forbidden", "forbidden", "forbidden", "forbidden",
                                           "ok"])
        self.assertEqual(out[0]["error"]["message"],
                         "denied by [acl] rule 'deny all = pubsub home/%u/#'")
        # A peer with a name gets just its own part denied.
        out = self.run_as(d, "mbtest", [
            ("publish", {"topic": f"home/{USER}/x", "payload": "1"}),
            ("publish", {"topic": "home/bob/x", "payload": "1"}),
            ("publish", {"topic": f"own/{USER}", "payload": "1"}),
        ])
        self.assertEqual(self.codes(out), ["forbidden", "ok", "ok"])

    def test_every_supplementary_group_counts(self):
        groups = list(range(60000, 60300))  # 300: more than the 255 once read
        d = self.acl_daemon([
            (f"allow gid {groups[-1]}", "pubsub many/#"),
            (f"deny gid {groups[-2]}", "publish many/secret"),
        ])
        out = as_peer(d.socket, NAMELESS, NAMELESS, groups, [
            ("publish", {"topic": "many/x", "payload": "1"}),
            ("subscribe", {"filter": "many/#"}),
            ("publish", {"topic": "many/secret", "payload": "1"}),
        ])
        self.assertEqual(self.codes(out), ["ok", "ok", "forbidden"])
        out = as_peer(d.socket, NAMELESS, NAMELESS, groups[:-1], [
            ("publish", {"topic": "many/x", "payload": "1"}),
        ])
        self.assertEqual(self.codes(out), ["forbidden"])

    def test_reload_storm_while_peers_and_the_broker_connect(self):
        rules = [("allow all", "pubsub hall/#"), ("deny all", "pubsub hall/%u/#"),
                 ("deny gid 60001", "publish hall/g")]
        d = self.acl_daemon(rules)
        with open(d.conf) as f:
            base = f.read()
        hosts = [f"127.0.0.1:{self.m.port}", f"127.0.0.1:{free_port()},localhost:{self.m.port}"]
        until = time.monotonic() + 3
        pids = [self.storm_peer(d.socket, uid, until) for uid in (NAMELESS, self.user.pw_uid)]
        n = 0
        while time.monotonic() < until:
            # Rules that drop the peers' subscriptions, or not; a new broker host list (a
            # reconnect), or the same one (an attempt in progress goes on).
            text = base.replace("pubsub hall/#", "pubsub hall/#" if n % 2 else "pubsub hall/b")
            text = text.replace(f"host = 127.0.0.1:{self.m.port}", f"host = {hosts[n // 3 % 2]}")
            with open(d.conf, "w") as f:
                f.write(text)
            d.proc.send_signal(signal.SIGHUP)
            n += 1
            time.sleep(0.05)
        for pid in pids:
            _, status = os.waitpid(pid, 0)
            self.assertEqual(os.waitstatus_to_exitcode(status), 0)
        self.assertTrue(d.alive(), d.logtext()[-3000:])
        with d.client() as c:
            c.wait_connected()

    def storm_peer(self, sock, uid, until):
        """A child connecting again and again as uid until `until`: subscribe, publish, go."""
        pid = os.fork()
        if pid:
            return pid
        code = 0
        try:
            os.setgroups([60000, 60001])
            os.setgid(uid)
            os.setuid(uid)
            while time.monotonic() < until:
                with Client(sock) as c:
                    for f in ("hall/a", "hall/#", "hall/+/x"):
                        c.request("subscribe", filter=f)
                    c.request("publish", topic="hall/g", payload="1")
        except (EOFError, ConnectionError):
            pass  # closed by the daemon (e.g. out of memory): allowed
        except Exception:
            code = 1
        os._exit(code)

    def test_secret_files_must_be_private(self):
        pw = os.path.join(self.tmp, "pw")
        with open(pw, "w") as f:
            f.write("secret\n")
        os.chmod(pw, 0o644)
        conf = os.path.join(self.tmp, "s.conf")
        with open(conf, "w") as f:
            f.write(f"[broker]\nusername = u\npassword_file = {pw}\n[ipc]\nsocket = {self.tmp}/s\n")
        r = subprocess.run([DAEMON, "--check-config", "-c", conf], capture_output=True, text=True)
        self.assertEqual(r.returncode, 1)
        self.assertIn(f"refusing to use broker.password_file {pw}: it is readable by others",
                      r.stderr)
        self.assertNotIn("secret", r.stderr.replace("password_file", ""))
        os.chmod(pw, 0o600)
        r = subprocess.run([DAEMON, "--check-config", "-c", conf], capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)


class BrokerAttempt(TestCase):
    def test_reload_during_connect_keeps_the_attempts_host(self):
        """A reload while TCP connects to the second broker host: TLS still names that host
        (SNI), not the first host of the reloaded configuration."""
        listener = socket.socket()
        self.cleanups.append(listener.close)
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        # The accept queue is full: the daemon's SYN is dropped and sent again after ~1 s.
        filler = socket.create_connection(("127.0.0.1", port))
        self.cleanups.append(filler.close)
        d = self.daemon(port, start=False, sections={
            "broker": {"host": f"127.0.0.1:{free_port()},localhost:{port}",
                       "connect_timeout": "30"},
            "tls": {"enabled": "true"}})
        d.start(wait_connected=False)
        wait_until(lambda: syn_sent_to(port), what="a TCP connect to the second host")
        with d.client() as c:
            c.ok("reload")
        listener.settimeout(WAIT)
        listener.accept()[0].close()  # room in the queue for the SYN sent again
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(WAIT)
            self.assertEqual(client_hello_sni(conn), "localhost")
        self.assertIn(f"TCP connected to 127.0.0.1:{port} (localhost)", d.logtext())


if __name__ == "__main__":
    main()

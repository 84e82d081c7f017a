#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Access control by peer credentials: children drop to other uids/gids, then talk to the
daemon; each rule kind allows and denies as configured."""
import grp
import json
import os
import pwd
import signal
import subprocess

from harness import DAEMON, Client, TestCase, main, wait_until

USER, GROUP = "mbtest", "mbtestgrp"


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


if __name__ == "__main__":
    main()

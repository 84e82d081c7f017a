/* SPDX-License-Identifier: MIT */
/* Unit tests of configuration parsing: defaults, every key type, FILE:LINE errors. */
#include <errno.h>

#include "config.h"
#include "defaults.h"
#include "testutil.h"

START_TEST(defaults)
{
    Config c;
    ck_assert_int_eq(config_init(&c), 0);
    ck_assert_uint_eq(c.broker.n_addrs, 1);
    ck_assert_str_eq(c.broker.addrs[0].host, "localhost");
    ck_assert_uint_eq(c.broker.addrs[0].port, 0);
    ck_assert_uint_eq(c.broker.port, 1883);
    ck_assert_uint_eq(c.broker.keepalive, 60);
    ck_assert(c.broker.clean_session);
    ck_assert_uint_eq(c.broker.max_inflight, 20);
    ck_assert_str_eq(c.ipc.socket, DEFAULT_SOCKET);
    ck_assert_uint_eq(c.ipc.mode, 0660);
    ck_assert_uint_eq(c.ipc.max_line, 1048576);
    ck_assert_uint_eq(c.queue.max_messages, 100000);
    ck_assert_int_eq(c.queue.fsync, FSYNC_BATCH);
    ck_assert(c.tls.verify);
    ck_assert_uint_eq(c.tls.min_version, 12);
    ck_assert_int_eq(c.log.level, LOG_LEVEL_INFO);
    char err[200];
    ck_assert_int_eq(config_check(&c, err, sizeof(err)), 0);
    config_free(&c);
}
END_TEST

START_TEST(every_key)
{
    static const char text[] = "; a comment\n"
                               "[broker]\n"
                               "host = a.example:1884, b.example , [::1]:8883\n"
                               "port = 8883\n"
                               "client_id = me\n"
                               "username = u\n"
                               "password_file = /etc/pw\n"
                               "keepalive = 30 ; inline comment\n"
                               "clean_session = no\n"
                               "connect_timeout = 5\n"
                               "reconnect_min = 2\n"
                               "reconnect_max = 120\n"
                               "max_inflight = 100\n"
                               "publish_timeout = 7\n"
                               "[will]\n"
                               "topic = status/me\n"
                               "message = gone\n"
                               "qos = 1\n"
                               "retain = true\n"
                               "[tls]\n"
                               "enabled = yes\n"
                               "ca_file = /ca.pem\n"
                               "verify = off\n"
                               "min_version = 1.3\n"
                               "alpn = mqtt\n"
                               "[ipc]\n"
                               "socket = /tmp/x.sock\n"
                               "mode = 0600\n"
                               "max_clients = 10\n"
                               "max_line = 64K\n"
                               "client_buffer = 1M\n"
                               "[queue]\n"
                               "max_messages = 5\n"
                               "max_bytes = 2G\n"
                               "spool_dir = /var/lib/mqttbridge\n"
                               "fsync = always\n"
                               "[log]\n"
                               "level = packet\n"
                               "[acl]\n";
    Config c;
    char err[300];
    ck_assert_int_eq(config_init(&c), 0);
    ck_assert_msg(config_parse(&c, text, "t.conf", err, sizeof(err)) == 0, "%s", err);
    ck_assert_uint_eq(c.broker.n_addrs, 3);
    ck_assert_str_eq(c.broker.addrs[0].host, "a.example");
    ck_assert_uint_eq(c.broker.addrs[0].port, 1884);
    ck_assert_str_eq(c.broker.addrs[1].host, "b.example");
    ck_assert_uint_eq(c.broker.addrs[1].port, 0);
    ck_assert_str_eq(c.broker.addrs[2].host, "::1");
    ck_assert_uint_eq(c.broker.addrs[2].port, 8883);
    ck_assert_uint_eq(c.broker.port, 8883);
    ck_assert_str_eq(c.broker.client_id, "me");
    ck_assert_str_eq(c.broker.password_file, "/etc/pw");
    ck_assert_uint_eq(c.broker.keepalive, 30);
    ck_assert(!c.broker.clean_session);
    ck_assert_uint_eq(c.broker.reconnect_max, 120);
    ck_assert_uint_eq(c.broker.publish_timeout, 7);
    ck_assert_str_eq(c.will.topic, "status/me");
    ck_assert_uint_eq(c.will.qos, 1);
    ck_assert(c.will.retain);
    ck_assert(c.tls.enabled);
    ck_assert(!c.tls.verify);
    ck_assert_uint_eq(c.tls.min_version, 13);
    ck_assert_str_eq(c.ipc.socket, "/tmp/x.sock");
    ck_assert_uint_eq(c.ipc.mode, 0600);
    ck_assert_uint_eq(c.ipc.max_line, 65536);
    ck_assert_uint_eq(c.ipc.client_buffer, 1 << 20);
    ck_assert_uint_eq(c.queue.max_bytes, 2ull << 30);
    ck_assert_int_eq(c.queue.fsync, FSYNC_ALWAYS);
    ck_assert_int_eq(c.log.level, LOG_LEVEL_PACKET);
    ck_assert_int_eq(config_check(&c, err, sizeof(err)), 0);
    config_free(&c);
}
END_TEST

static const struct {
    const char *text, *err;
} bad[] = {
    {"[broker]\nkeepalive = 10\nfoo = 1\n", "f.conf:3: unknown key 'foo' in [broker]"},
    {"[brokr]\nhost = x\n", "f.conf:2: unknown section [brokr]"},
    {"host = x\n", "f.conf:1: key 'host' outside of any [section]"},
    {"[broker]\nkeepalive = soon\n",
     "f.conf:2: keepalive must be a whole number from 0 to 65535, not 'soon'"},
    {"[broker]\nkeepalive = -1\n",
     "f.conf:2: keepalive must be a whole number from 0 to 65535, not '-1'"},
    {"[broker]\nport = 70000\n",
     "f.conf:2: port must be a whole number from 1 to 65535, not '70000'"},
    {"[broker]\nclean_session = maybe\n",
     "f.conf:2: clean_session must be true or false, not 'maybe'"},
    {"[will]\nqos = 3\n", "f.conf:2: qos must be a whole number from 0 to 2, not '3'"},
    {"[ipc]\nmode = 999\n", "f.conf:2: mode must be octal permission bits like 0660, not '999'"},
    {"[ipc]\nmax_line = 10X\n", "f.conf:2: max_line must be a whole number from 1024 to 1073741824 "
                                "(suffix K, M, G allowed), not '10X'"},
    {"[log]\nlevel = loud\n",
     "f.conf:2: level must be error, warning, info, debug or packet, not 'loud'"},
    {"[queue]\nfsync = sometimes\n",
     "f.conf:2: fsync must be always, batch or never, not 'sometimes'"},
    {"[tls]\nmin_version = 1.1\n", "f.conf:2: min_version must be 1.2 or 1.3, not '1.1'"},
    {"[broker]\nhost = a:0\n",
     "f.conf:2: invalid broker address 'a:0' (want host[:port], [v6addr]:port)"},
    {"[broker]\nhost = [::1\n",
     "f.conf:2: invalid broker address '[::1' (want host[:port], [v6addr]:port)"},
    {"[broker]\nhost = a,,b\n",
     "f.conf:2: invalid broker address '' (want host[:port], [v6addr]:port)"},
    {"[broker]\n\nthis is not ini\n", "f.conf:3: syntax error (expected [section] or key = value)"},
    {"[acl]\nallow = x\n",
     "f.conf:2: [acl] unknown key 'allow' (allow WHO, deny WHO, admin, max_connections_per_uid, "
     "max_subscriptions_per_uid)"},
    {"[acl]\nallow people = publish a\n",
     "f.conf:2: [acl] rule 'allow people = publish a': who must be user NAME, group NAME, uid N, "
     "gid N or all"},
    {"[acl]\nallow all = read a\n",
     "f.conf:2: [acl] rule 'allow all = read a': the value must start with publish, subscribe or "
     "pubsub"},
    {"[acl]\nallow uid 5 = publish a/#/b\n",
     "f.conf:2: [acl] rule 'allow uid 5 = publish a/#/b': 'a/#/b' is not a valid topic filter"},
    {"[acl]\nadmin = root\n",
     "f.conf:2: [acl] admin: 'root' must be user:NAME, group:NAME, uid:N or gid:N"},
};

START_TEST(errors_name_file_and_line)
{
    Config c;
    char err[300];
    ck_assert_int_eq(config_init(&c), 0);
    ck_assert_int_eq(config_parse(&c, bad[_i].text, "f.conf", err, sizeof(err)), -EINVAL);
    ck_assert_str_eq(err, bad[_i].err);
    config_free(&c);
}
END_TEST

START_TEST(cross_checks)
{
    static const struct {
        const char *text, *err;
    } cases[] = {
        {"[broker]\nreconnect_min = 10\nreconnect_max = 5\n",
         "broker.reconnect_min (10) is larger than reconnect_max (5)"},
        {"[broker]\npassword = x\n", "a broker password needs broker.username (MQTT 3.1.1 rule)"},
        {"[broker]\nusername = u\npassword = x\npassword_file = /p\n",
         "broker.password and broker.password_file are both set: use one"},
        {"[will]\ntopic = a/#\n", "will.topic 'a/#' is not a valid topic name"},
        {"[tls]\ncert_file = /c.pem\n", "tls.cert_file and tls.key_file go together"},
        {"[ipc]\nsocket = rel.sock\n", "ipc.socket must be an absolute path, not 'rel.sock'"},
        {"[broker]\nclient_id = caf\xe9\n", "broker.client_id is not valid UTF-8"},
        {"[ipc]\nmax_line = 1G\n",
         "ipc.max_line (1073741824) is larger than any request can use: MQTT carries at most 256 "
         "MiB per message, 357979480 bytes as base64 in a publish request"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        Config c;
        char err[300];
        ck_assert_int_eq(config_init(&c), 0);
        ck_assert_int_eq(config_parse(&c, cases[i].text, "f", err, sizeof(err)), 0);
        ck_assert_int_eq(config_check(&c, err, sizeof(err)), -EINVAL);
        ck_assert_str_eq(err, cases[i].err);
        config_free(&c);
    }
}
END_TEST

START_TEST(set_hosts_override)
{
    Config c;
    char err[200];
    ck_assert_int_eq(config_init(&c), 0);
    ck_assert_int_eq(config_set_hosts(&c, "127.0.0.1:1999", err, sizeof(err)), 0);
    ck_assert_uint_eq(c.broker.n_addrs, 1);
    ck_assert_str_eq(c.broker.addrs[0].host, "127.0.0.1");
    ck_assert_uint_eq(c.broker.addrs[0].port, 1999);
    ck_assert_int_eq(config_set_hosts(&c, "::1", err, sizeof(err)), 0);
    ck_assert_str_eq(c.broker.addrs[0].host, "::1");
    ck_assert_uint_eq(c.broker.addrs[0].port, 0);
    /* A failed override keeps what was there. */
    ck_assert_int_eq(config_set_hosts(&c, "x:y", err, sizeof(err)), -EINVAL);
    ck_assert_str_eq(c.broker.addrs[0].host, "::1");
    config_free(&c);
}
END_TEST

/* The reload diff: what `text` changes relative to the defaults. */
static ConfigDiff diff_of(const char *text)
{
    Config a, b;
    char err[200];
    ck_assert_int_eq(config_init(&a), 0);
    ck_assert_int_eq(config_init(&b), 0);
    ck_assert_msg(config_parse(&b, text, "t.conf", err, sizeof(err)) == 0, "%s", err);
    ConfigDiff d;
    config_diff(&a, &b, &d);
    config_free(&a);
    config_free(&b);
    return d;
}

/* Each key takes effect when the daemon can apply it: limits at once, the broker link's
 * settings with a reconnect, the socket and the spool at the next start (named). */
START_TEST(reload_diff)
{
    ConfigDiff d = diff_of("");
    ck_assert_uint_eq(d.changed, 0);
    ck_assert(!d.reconnect);
    ck_assert_str_eq(d.at_start, "");

    d = diff_of("[ipc]\nmax_line = 2048\nclient_buffer = 8K\n[log]\nlevel = debug\n"
                "[broker]\npublish_timeout = 7\npassword_file = /x\n[queue]\nmax_messages = 9\n");
    ck_assert_uint_eq(d.changed, 6);
    ck_assert(!d.reconnect);
    ck_assert_str_eq(d.at_start, "");

    static const char *const link[] = {
        "[broker]\nhost = 127.0.0.2\n", "[broker]\nport = 1884\n",
        "[broker]\nclient_id = x2\n",   "[broker]\nusername = u\n",
        "[broker]\nkeepalive = 5\n",    "[broker]\nclean_session = false\n",
        "[will]\ntopic = a/b\n",        "[will]\nqos = 1\n",
        "[tls]\nenabled = true\n",      "[tls]\nca_file = /ca.pem\n",
        "[tls]\nmin_version = 1.3\n",   "[tls]\nalpn = mqtt\n",
    };
    for (size_t i = 0; i < sizeof(link) / sizeof(link[0]); i++) {
        d = diff_of(link[i]);
        ck_assert_msg(d.changed == 1 && d.reconnect && !d.at_start[0], "%s", link[i]);
    }

    d = diff_of("[ipc]\nsocket = /run/x.sock\nmode = 0600\ngroup = adm\n"
                "[queue]\nspool_dir = /var/s\nfsync = always\n");
    ck_assert_uint_eq(d.changed, 5);
    ck_assert(!d.reconnect);
    ck_assert_str_eq(d.at_start, "ipc.socket, ipc.mode, ipc.group, queue.spool_dir, queue.fsync");
}
END_TEST

static Suite *config_suite(void)
{
    Suite *s = suite_create("config");
    TCase *tc = tcase_create("config");
    tcase_add_test(tc, defaults);
    tcase_add_test(tc, every_key);
    tcase_add_loop_test(tc, errors_name_file_and_line, 0, sizeof(bad) / sizeof(bad[0]));
    tcase_add_test(tc, cross_checks);
    tcase_add_test(tc, set_hosts_override);
    tcase_add_test(tc, reload_diff);
    suite_add_tcase(s, tc);
    return s;
}

CHECK_MAIN(config_suite)

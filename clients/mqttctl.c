/* SPDX-License-Identifier: MIT */
/*
 * mqttctl: the admin and scripting CLI of mqttbridged.
 *
 * Exit status: 0 success, 1 the daemon answered an error, 2 usage error, 3 the daemon cannot
 * be reached. pub/sub follow mosquitto_pub/mosquitto_sub flags.
 */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "base64.h"
#include "defaults.h"
#include "ipc/protocol.h"
#include "ipc/openmetrics.h"
#include "mqttbridge/client.h"
#include "utf8.h"
#include "v5opts.h"

enum { EXIT_DAEMON_ERROR = 1, EXIT_USAGE = 2, EXIT_UNREACHABLE = 3 };

static const char *socket_path;
static bool json_out;
static int timeout_ms = 10000;
static volatile sig_atomic_t interrupted;

static void usage(FILE *f)
{
    fprintf(
        f, "Usage: mqttctl [-s SOCKET] [--json] [--timeout SECONDS] COMMAND [ARGS]\n"
           "\n"
           "Commands:\n"
           "  status                      the broker session and the daemon, summarised\n"
           "  stats [--reset|--openmetrics]  every counter; --reset zeroes them (admin);\n"
           "                              --openmetrics: the OpenMetrics text format\n"
           "  pub -t TOPIC (-m MSG | -f FILE | -l | -n) [-q QOS] [-r]\n"
           "                              publish a message, a file, each stdin line, or nothing\n"
           "                              [-D publish PROPERTY VALUE...]\n"
           "  sub -t FILTER [-t FILTER...] [-q QOS] [-C COUNT] [-W SECONDS] [-v] [-F FORMAT]\n"
           "      [--nl] [--rap] [--retain-handling N] [--session NAME]\n"
           "                              print messages (-v: with their topic)\n"
           "  rr -t TOPIC (-m MSG | -f FILE) [-q QOS] [-W SECONDS] [-D publish PROPERTY VALUE...]\n"
           "                              send a request, print its response (MQTT 5)\n"
           "  sessions                    the named sessions (admin)\n"
           "  ping                        round trip to the daemon and the broker\n"
           "  top [--once]                a live view, once a second (--once: one frame, plain)\n"
           "  reconnect                   drop and re-establish the broker session (admin)\n"
           "  reload                      re-read the daemon's configuration (admin)\n"
           "  version                     versions of mqttctl and the daemon\n"
           "\n"
           "Options:\n"
           "  -s, --socket PATH   the daemon socket (else $MQTTBRIDGE_SOCKET, else\n"
           "                      " DEFAULT_SOCKET ")\n"
           "      --json          print the daemon's JSON replies and events\n"
           "      --timeout SECS  how long to wait for the daemon (default 10)\n"
           "  -h, --help          this help\n"
           "\n"
           "Exit status: 0 ok, 1 the daemon answered an error, 2 usage, 3 daemon unreachable.\n");
}

static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "mqttctl: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\nTry 'mqttctl --help'.\n");
    va_end(ap);
    return EXIT_USAGE;
}

static int connect_daemon(mqb_client **c)
{
    int r = mqb_connect(socket_path, c);
    if (r < 0) {
        fprintf(stderr, "mqttctl: cannot connect to %s: %s (is mqttbridged running?)\n",
                socket_path, strerror(-r));
        return EXIT_UNREACHABLE;
    }
    return 0;
}

static int lost(int r)
{
    if (r == -ETIMEDOUT) {
        fprintf(stderr, "mqttctl: no answer from the daemon within %d ms\n", timeout_ms);
    } else {
        fprintf(stderr, "mqttctl: lost the connection to the daemon: %s\n",
                r == -EPIPE ? "closed" : strerror(-r));
    }
    return EXIT_UNREACHABLE;
}

static void print_json(json_t *j)
{
    char *s = json_dumps(j, JSON_COMPACT);
    if (s) {
        puts(s);
        free(s);
    }
}

/* The error of a failed reply, printed; returns the exit status for it. */
static int reply_failed(json_t *reply, const char *what)
{
    json_t *e = json_object_get(reply, "error");
    fprintf(stderr, "mqttctl: %s%s%s: %s\n", what ? what : "", what ? ": " : "",
            json_string_value(json_object_get(e, "code")),
            json_string_value(json_object_get(e, "message")));
    return EXIT_DAEMON_ERROR;
}

/* One request, one reply; on success *ret (may be NULL) gets the reply. */
static int simple(const char *op, json_t **ret)
{
    mqb_client *c;
    int r = connect_daemon(&c);
    if (r) {
        return r;
    }
    json_t *reply;
    r = mqb_call(c, json_pack("{s:s}", "op", op), &reply, timeout_ms);
    mqb_close(c);
    if (r < 0) {
        return lost(r);
    }
    if (json_out) {
        print_json(reply);
    }
    if (!json_is_true(json_object_get(reply, "ok"))) {
        r = json_out ? EXIT_DAEMON_ERROR : reply_failed(reply, op);
        json_decref(reply);
        return r;
    }
    if (ret) {
        *ret = reply;
    } else {
        json_decref(reply);
    }
    return 0;
}

/* simple(), for a command that prints the reply itself: 0 with *ret to print, -1 when
 * --json printed it already, else the exit status of a failure. */
static int fetch(const char *op, json_t **ret)
{
    int r = simple(op, ret);
    if (r == 0 && json_out) {
        json_decref(*ret);
        return -1;
    }
    return r;
}

static void duration(char *out, size_t n, json_int_t s)
{
    if (s >= 86400) {
        snprintf(out, n, "%lldd %02lldh%02lldm", (long long)(s / 86400),
                 (long long)(s % 86400 / 3600), (long long)(s % 3600 / 60));
    } else if (s >= 3600) {
        snprintf(out, n, "%lldh%02lldm%02llds", (long long)(s / 3600), (long long)(s % 3600 / 60),
                 (long long)(s % 60));
    } else if (s >= 60) {
        snprintf(out, n, "%lldm%02llds", (long long)(s / 60), (long long)(s % 60));
    } else {
        snprintf(out, n, "%llds", (long long)s);
    }
}

/* "mqtt          5 (broker: receive max 20, max QoS 2, retain yes, 10 aliases)" */
static void print_protocol(json_t *st)
{
    json_t *l = json_object_get(st, "broker_limits");
    const char *proto = json_string_value(json_object_get(st, "protocol"));
    if (strcmp(proto, "5") != 0 || !json_is_object(l)) {
        printf("mqtt          %s\n", proto);
        return;
    }
    json_t *mps = json_object_get(l, "maximum_packet_size");
    printf("mqtt          5 (broker: receive max %lld, max QoS %lld, retain %s, %lld aliases",
           (long long)json_integer_value(json_object_get(l, "receive_maximum")),
           (long long)json_integer_value(json_object_get(l, "maximum_qos")),
           json_is_true(json_object_get(l, "retain_available")) ? "yes" : "no",
           (long long)json_integer_value(json_object_get(l, "topic_alias_maximum")));
    if (json_is_integer(mps)) {
        printf(", max packet %lld", (long long)json_integer_value(mps));
    }
    printf(")\n");
}

static int cmd_status(void)
{
    json_t *reply;
    int r = fetch("status", &reply);
    if (r) {
        return r < 0 ? 0 : r;
    }
    json_t *s = json_object_get(reply, "status");
#define I(k) ((long long)json_integer_value(json_object_get(s, k)))
#define S(k) json_string_value(json_object_get(s, k))
#define B(k) json_is_true(json_object_get(s, k))
    char up[32], conn[32];
    duration(up, sizeof(up), I("uptime_s"));
    duration(conn, sizeof(conn), I("connected_for_s"));
    if (B("connected")) {
        printf("connected     yes, to %s for %s%s\n", S("broker"), conn,
               B("session_present") ? " (session resumed)" : "");
    } else {
        printf("connected     no (%s), broker %s\n", S("state"), S("broker"));
        if (json_is_integer(json_object_get(s, "next_retry_ms"))) {
            printf("next retry    in %lld ms\n", I("next_retry_ms"));
        }
    }
    printf("last error    %s\n", S("last_error") ? S("last_error") : "none");
    if (S("tls_version")) {
        printf("tls           yes, %s %s\n", S("tls_version"), S("tls_cipher"));
    } else {
        printf("tls           %s\n", B("tls") ? "yes" : "no");
    }
    if (S("protocol")) {
        print_protocol(s);
    }
    printf("client id     %s\n", S("client_id"));
    printf("keepalive     %lld s\n", I("keepalive"));
    printf("reconnects    %lld\n", I("reconnects"));
    printf("queued        %lld (in flight %lld)\n", I("queued"), I("inflight"));
    printf("local clients %lld\n", I("local_clients"));
    printf("subscriptions %lld\n", I("subscriptions"));
    printf("uptime        %s\n", up);
    printf("version       mqttbridged %s\n", S("version"));
#undef I
#undef S
#undef B
    json_decref(reply);
    return 0;
}

/* The statistics in the OpenMetrics text format (lib/ipc/openmetrics.c). */
static int print_openmetrics(void)
{
    json_t *reply;
    bool was = json_out;
    json_out = false; /* the reply is not printed as JSON: the exposition is */
    int r = fetch("stats", &reply);
    json_out = was;
    if (r) {
        return r < 0 ? 0 : r;
    }
    Buf out = {0};
    r = openmetrics_write(&out, json_object_get(reply, "stats"));
    if (r == 0 && fwrite(out.data, 1, out.len, stdout) != out.len) {
        r = -EIO;
    }
    buf_free(&out);
    json_decref(reply);
    if (r < 0) {
        fprintf(stderr, "mqttctl: cannot write the metrics: %s\n", strerror(-r));
        return EXIT_UNREACHABLE;
    }
    return 0;
}

static int cmd_stats(int argc, char **argv)
{
    bool reset = false;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--reset") == 0) {
            reset = true;
        } else if (strcmp(argv[i], "--openmetrics") == 0) {
            return print_openmetrics();
        } else {
            return usage_error("stats: unknown option '%s'", argv[i]);
        }
    }
    if (reset) {
        int r = simple("stats_reset", NULL);
        if (!r && !json_out) {
            printf("statistics reset\n");
        }
        return r;
    }
    json_t *reply;
    int r = fetch("stats", &reply);
    if (r) {
        return r < 0 ? 0 : r;
    }
    json_t *st = json_object_get(reply, "stats");
    const char *key;
    json_t *v;
    size_t width = 0;
    json_object_foreach(st, key, v)
    {
        width = json_is_integer(v) && strlen(key) > width ? strlen(key) : width;
    }
    json_object_foreach(st, key, v)
    {
        if (json_is_integer(v)) { /* (the histograms: --openmetrics) */
            printf("%-*s %12lld\n", (int)width, key, (long long)json_integer_value(v));
        }
    }
    json_decref(reply);
    return 0;
}

/* ---- top ---- */

static json_int_t num(const json_t *o, const char *key)
{
    return json_integer_value(json_object_get(o, key));
}

/* "p50 2 ms  p90 5 ms  p99 10 ms" of a percentiles object ("-" when nothing was measured). */
static void put_percentiles(FILE *f, const json_t *p)
{
    static const char *const names[] = {"p50", "p90", "p99"};
    for (int i = 0; i < 3; i++) {
        const json_t *v = json_object_get(p, names[i]);
        if (json_is_integer(v) && json_integer_value(v) > 5000) {
            fprintf(f, "%s%s >5 s", i ? "  " : "", names[i]);
        } else if (json_is_integer(v)) {
            fprintf(f, "%s%s %lld ms", i ? "  " : "", names[i], (long long)json_integer_value(v));
        } else {
            fprintf(f, "%s%s -", i ? "  " : "", names[i]);
        }
    }
    fputc('\n', f);
}

/* One frame from a status and a stats reply. The daemon keeps the rates and percentiles. */
static void draw(FILE *f, const json_t *status, const json_t *stats)
{
    char since[64] = "";
    json_t *up = json_object_get(status, "connected_for_s");
    if (json_is_integer(up)) {
        duration(since, sizeof(since), json_integer_value(up));
    }
    const char *proto = json_string_value(json_object_get(status, "protocol"));
    if (json_is_true(json_object_get(status, "connected"))) {
        fprintf(f, "broker      connected to %s for %s (MQTT %s)\n",
                json_string_value(json_object_get(status, "broker")), since, proto ? proto : "?");
    } else {
        const char *err = json_string_value(json_object_get(status, "last_error"));
        fprintf(f, "broker      NOT connected (%s): %s\n",
                json_string_value(json_object_get(status, "state")), err ? err : "");
    }
    const json_t *rates = json_object_get(stats, "rates");
    fprintf(f, "messages/s  in %.1f  out %.1f\n",
            json_number_value(json_object_get(rates, "messages_in_per_s")),
            json_number_value(json_object_get(rates, "messages_out_per_s")));
    fprintf(f, "queue       queued %lld  in flight %lld  rate limited %s\n",
            (long long)num(stats, "queued"), (long long)num(stats, "inflight"),
            json_is_true(json_object_get(status, "rate_limited")) ? "yes" : "no");
    fprintf(f, "local       clients %lld  subscriptions %lld  sessions %lld\n",
            (long long)num(stats, "local_clients"), (long long)num(stats, "subscriptions"),
            (long long)num(stats, "sessions"));
    const json_t *pct = json_object_get(stats, "percentiles");
    fprintf(f, "publish rtt ");
    put_percentiles(f, json_object_get(pct, "publish_rtt_ms"));
    fprintf(f, "ping rtt    ");
    put_percentiles(f, json_object_get(pct, "ping_rtt_ms"));
    fprintf(f, "dropped     %lld  expired %lld  failed %lld  reconnects %lld\n",
            (long long)num(stats, "messages_dropped"), (long long)num(stats, "messages_expired"),
            (long long)num(stats, "pub_fail_count"), (long long)num(stats, "reconnects"));
}

static int cmd_top(int argc, char **argv)
{
    bool once = false;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--once") == 0) {
            once = true;
        } else {
            return usage_error("top: unknown option '%s'", argv[i]);
        }
    }
    mqb_client *c;
    int r = connect_daemon(&c);
    for (bool first = true; r == 0 && (first || !once); first = false) {
        json_t *status = NULL, *stats = NULL;
        r = mqb_call(c, json_pack("{s:s}", "op", "status"), &status, timeout_ms);
        if (r == 0) {
            r = mqb_call(c, json_pack("{s:s}", "op", "stats"), &stats, timeout_ms);
        }
        if (r == 0) {
            if (!once) {
                fputs("\033[H\033[2J", stdout); /* home, clear */
            }
            draw(stdout, json_object_get(status, "status"), json_object_get(stats, "stats"));
            fflush(stdout);
        }
        json_decref(status);
        json_decref(stats);
        if (r == 0 && !once) {
            struct timespec second = {1, 0};
            (void)nanosleep(&second, NULL); /* a signal ends it early: the next frame comes */
        }
    }
    if (r > 0) {
        return r; /* could not connect: said */
    }
    mqb_close(c);
    return r < 0 ? lost(r) : 0;
}

/* The named sessions, one per line, aligned (an admin op). */
static int cmd_sessions(void)
{
    json_t *reply;
    int r = fetch("sessions", &reply);
    if (r) {
        return r < 0 ? 0 : r;
    }
    json_t *list = json_object_get(reply, "sessions");
    size_t width = 4;
    for (size_t i = 0; i < json_array_size(list); i++) {
        size_t n = strlen(json_string_value(json_object_get(json_array_get(list, i), "name")));
        width = n > width ? n : width;
    }
    printf("%-*s %8s %9s %13s %8s %10s %8s\n", (int)width, "NAME", "UID", "CONNECTED",
           "SUBSCRIPTIONS", "PENDING", "OLDEST(s)", "DROPPED");
    for (size_t i = 0; i < json_array_size(list); i++) {
        json_t *s = json_array_get(list, i);
        printf("%-*s %8lld %9s %13lld %8lld %10lld %8lld\n", (int)width,
               json_string_value(json_object_get(s, "name")),
               (long long)json_integer_value(json_object_get(s, "uid")),
               json_is_true(json_object_get(s, "connected")) ? "yes" : "no",
               (long long)json_integer_value(json_object_get(s, "subscriptions")),
               (long long)json_integer_value(json_object_get(s, "pending")),
               (long long)json_integer_value(json_object_get(s, "oldest_pending_s")),
               (long long)json_integer_value(json_object_get(s, "dropped")));
    }
    json_decref(reply);
    return 0;
}

static int64_t mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static int cmd_ping(void)
{
    int64_t t0 = mono_us();
    json_t *reply;
    int r = simple("ping", &reply);
    int64_t us = mono_us() - t0;
    if (r || json_out) {
        if (!r) {
            json_decref(reply); /* printed already */
        }
        return r;
    }
    json_t *rtt = json_object_get(reply, "broker_rtt_ms");
    printf("daemon round trip %.3f ms\n", (double)us / 1000.0);
    if (json_is_integer(rtt)) {
        printf("broker round trip %lld ms (last PINGREQ)\n", (long long)json_integer_value(rtt));
    } else {
        printf("broker round trip unknown (no PINGREQ answered yet)\n");
    }
    json_decref(reply);
    return 0;
}

static int cmd_version(void)
{
    printf("mqttctl %s\n", MQTTBRIDGE_VERSION);
    json_t *reply;
    bool saved = json_out;
    json_out = false;
    int r = simple("status", &reply);
    json_out = saved;
    if (r) {
        return r;
    }
    printf("mqttbridged %s\n",
           json_string_value(json_object_get(json_object_get(reply, "status"), "version")));
    json_decref(reply);
    return 0;
}

static int cmd_admin(const char *op)
{
    int r = simple(op, NULL);
    if (!r && !json_out) {
        printf("%s: done\n", op);
    }
    return r;
}

/* -q for pub and sub: 0, 1 or 2. */
static int parse_qos(const char *cmd, const char *arg, int *ret)
{
    if (strlen(arg) != 1 || arg[0] < '0' || arg[0] > '2') {
        return usage_error("%s: -q must be 0, 1 or 2, not '%s'", cmd, arg);
    }
    *ret = arg[0] - '0';
    return 0;
}

/* ---- pub ---- */

/* One publish request (its reply is read with mqb_next_line). Its id, or -errno. */
static int64_t queue_publish(mqb_client *c, const char *topic, View payload, int qos, bool retain,
                             bool wait, const json_t *props)
{
    mqb_publish_args p = {.topic = topic,
                          .payload = payload.p,
                          .payload_len = payload.n,
                          .qos = qos,
                          .retain = retain,
                          .no_wait = !wait,
                          .timeout_ms = timeout_ms,
                          .properties = json_object_size(props) ? props : NULL};
    return mqb_publish(c, &p, NULL, NULL);
}

static int read_all(const char *path, Buf *out)
{
    int fd = strcmp(path, "-") == 0 ? STDIN_FILENO : open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return -errno;
    }
    int e;
    while ((e = buf_reserve(out, 65536)) == 0) {
        ssize_t n = read(fd, out->data + out->len, 65536);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            e = n < 0 ? -errno : 0;
            break;
        }
        out->len += (size_t)n;
    }
    if (fd != STDIN_FILENO) {
        (void)close(fd); /* read-only: nothing to lose */
    }
    return e;
}

/* Read a reply for a pipelined publish; failures reported with their line number. A plain
 * success (`{"id":N,"ok":true}`) is recognised without parsing. */
static int collect_reply(mqb_client *c, int64_t first_id, int *failures)
{
    View line;
    size_t n;
    const char *p;
    int r = mqb_next_line(c, &p, &n, timeout_ms + 5000); /* the daemon's own timeout first */
    if (r <= 0) {
        return r == 0 ? -ETIMEDOUT : r;
    }
    line = VIEW(p, n);
    static const char ok_tail[] = ",\"ok\":true}";
    if (!json_out && line.n > 6 + sizeof(ok_tail) - 1 && memcmp(line.p, "{\"id\":", 6) == 0 &&
        memcmp(line.p + line.n - (sizeof(ok_tail) - 1), ok_tail, sizeof(ok_tail) - 1) == 0) {
        return 1;
    }
    json_t *m = json_loadb((const char *)line.p, line.n, JSON_ALLOW_NUL, NULL);
    if (!m) {
        return -EBADMSG;
    }
    if (json_object_get(m, "event")) {
        json_decref(m);
        return 2; /* not a reply */
    }
    if (json_out) {
        print_json(m);
    }
    if (!json_is_true(json_object_get(m, "ok"))) {
        char what[48];
        snprintf(what, sizeof(what), "message %lld",
                 (long long)(json_integer_value(json_object_get(m, "id")) - first_id + 1));
        if (!json_out) {
            (void)reply_failed(m, what); /* counted below: the exit status comes at the end */
        }
        (*failures)++;
    }
    json_decref(m);
    return 1;
}

typedef struct PubArgs {
    const char *topic, *message, *file;
    bool lines, null_msg, retain;
    int qos;
    json_t *props; /* -D publish: MQTT 5 fields */
} PubArgs;

/* 0, or the exit status of a usage error (reported). */
static int parse_pub_args(int argc, char **argv, PubArgs *ret)
{
    PubArgs a = *ret;
    char err[256];
    int o;
    static const struct option opts[] = {{"json", no_argument, NULL, 'J'}, {0}};
    optind = 1;
    while ((o = getopt_long(argc, argv, "+t:m:f:lnq:rD:", opts, NULL)) != -1) {
        switch (o) {
        case 'D':
            if (v5_define(a.props, optarg, argc, argv, &optind, err, sizeof(err)) < 0) {
                return usage_error("%s", err);
            }
            break;
        case 't':
            a.topic = optarg;
            break;
        case 'm':
            a.message = optarg;
            break;
        case 'f':
            a.file = optarg;
            break;
        case 'l':
            a.lines = true;
            break;
        case 'n':
            a.null_msg = true;
            break;
        case 'r':
            a.retain = true;
            break;
        case 'J':
            json_out = true;
            break;
        case 'q':
            if (parse_qos("pub", optarg, &a.qos)) {
                return EXIT_USAGE;
            }
            break;
        default:
            return usage_error("pub: bad option");
        }
    }
    if (optind < argc) {
        return usage_error("pub: unexpected argument '%s'", argv[optind]);
    }
    if (!a.topic) {
        return usage_error("pub: -t TOPIC is required");
    }
    if ((a.message != NULL) + (a.file != NULL) + a.lines + a.null_msg != 1) {
        return usage_error("pub: give exactly one of -m MSG, -f FILE, -l, -n");
    }
    *ret = a;
    return 0;
}

static int queue_failed(int r)
{
    fprintf(stderr, "mqttctl: cannot queue a publish: %s\n", strerror(-r));
    return EXIT_UNREACHABLE;
}

/* -m, -f or -n: one message, waiting for its reply. 0 or -errno (the connection); a file
 * that cannot be read is reported and is *ret_status EXIT_USAGE. */
static int pub_one(mqb_client *c, const PubArgs *a, int *failures, int *ret_status)
{
    Buf payload = {0};
    int r;
    if (a->file && (r = read_all(a->file, &payload)) < 0) {
        fprintf(stderr, "mqttctl: cannot read %s: %s\n", a->file, strerror(-r));
        buf_free(&payload);
        *ret_status = EXIT_USAGE;
        return 0;
    }
    View p = a->message ? VIEW_STR(a->message) : buf_view(&payload);
    int64_t first = queue_publish(c, a->topic, p, a->qos, a->retain, true, a->props);
    buf_free(&payload);
    if (first < 0) {
        *ret_status = queue_failed((int)first);
        return 0;
    }
    while ((r = collect_reply(c, first, failures)) == 2) {
    }
    return r < 0 ? r : 0;
}

/* -l: each stdin line a message, up to WINDOW requests in flight, replies read as they come.
 * 0 or -errno (the connection); a publish that cannot be queued sets *ret_status. */
static int pub_lines(mqb_client *c, const PubArgs *a, int *failures, int *ret_status)
{
    enum { WINDOW = 1024 };
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    long outstanding = 0;
    int64_t first = 0;
    int r = 1;
    while (r > 0 && (n = getline(&line, &cap, stdin)) >= 0) {
        if (n && line[n - 1] == '\n') {
            n--;
        }
        /* A QoS 0 stream is confirmed as queued (as mosquitto_pub confirms nothing);
         * QoS 1/2 lines wait for the broker's acknowledgement. */
        int64_t q = queue_publish(c, a->topic, VIEW(line, (size_t)n), a->qos, a->retain, a->qos > 0,
                                  a->props);
        if (q < 0) {
            *ret_status = queue_failed((int)q);
            break;
        }
        first = first ? first : q;
        outstanding++;
        if (mqb_unsent(c) > 256 * 1024) {
            int f = mqb_flush(c, timeout_ms); /* 0 when flushed: the stream goes on */
            if (f < 0) {
                r = f;
                break;
            }
        }
        while (r > 0 && outstanding >= WINDOW) {
            r = collect_reply(c, first, failures);
            outstanding -= r == 1;
        }
    }
    free(line);
    while (r > 0 && outstanding > 0) {
        r = collect_reply(c, first, failures);
        outstanding -= r == 1;
    }
    return r < 0 ? r : 0;
}

static int pub_with(PubArgs *a, int argc, char **argv)
{
    int r = parse_pub_args(argc, argv, a);
    if (r) {
        return r;
    }
    mqb_client *c;
    if ((r = connect_daemon(&c))) {
        return r;
    }
    int failures = 0, status = 0;
    r = a->lines ? pub_lines(c, a, &failures, &status) : pub_one(c, a, &failures, &status);
    mqb_close(c);
    if (r < 0) {
        return lost(r);
    }
    return status ? status : failures ? EXIT_DAEMON_ERROR : 0;
}

static int cmd_pub(int argc, char **argv)
{
    PubArgs a = {.props = json_object()};
    int r = a.props ? pub_with(&a, argc, argv) : usage_error("pub: out of memory");
    json_decref(a.props);
    return r;
}

/* ---- sub ---- */

static void on_signal(int sig)
{
    (void)sig;
    interrupted = 1;
}

static int write_all(const void *p, size_t n)
{
    const uint8_t *b = p;
    while (n) {
        ssize_t w = write(STDOUT_FILENO, b, n);
        if (w < 0 && errno == EINTR) {
            continue;
        }
        if (w <= 0) {
            return -1;
        }
        b += w;
        n -= (size_t)w;
    }
    return 0;
}

typedef struct SubArgs {
    const char *filters[64];
    int n_filters, qos;
    long count, wait_s; /* 0: no limit */
    bool verbose;
    const char *format;  /* -F */
    const char *session; /* --session: named, each message acknowledged */
    bool qos_given;
    bool no_local, retain_as_published; /* --nl, --rap */
    int retain_handling;                /* --retain-handling, -1: not given */
} SubArgs;

/* 0, or the exit status of a usage error (reported). */
static int parse_sub_args(int argc, char **argv, SubArgs *ret)
{
    SubArgs a = {.retain_handling = -1};
    int o;
    static const struct option opts[] = {{"json", no_argument, NULL, 'J'},
                                         {"nl", no_argument, NULL, 'L'},
                                         {"rap", no_argument, NULL, 'R'},
                                         {"retain-handling", required_argument, NULL, 'H'},
                                         {"session", required_argument, NULL, 'S'},
                                         {0}};
    optind = 1;
    while ((o = getopt_long(argc, argv, "+t:q:C:W:vF:", opts, NULL)) != -1) {
        char *end;
        switch (o) {
        case 'F':
            a.format = optarg;
            break;
        case 'S':
            a.session = optarg;
            a.qos = a.qos_given ? a.qos : 1; /* QoS 0 is not kept for a session */
            break;
        case 'L':
            a.no_local = true;
            break;
        case 'R':
            a.retain_as_published = true;
            break;
        case 'H':
            if (strlen(optarg) != 1 || optarg[0] < '0' || optarg[0] > '2') {
                return usage_error("sub: --retain-handling must be 0, 1 or 2, not '%s'", optarg);
            }
            a.retain_handling = optarg[0] - '0';
            break;
        case 't':
            if (a.n_filters == 64) {
                return usage_error("sub: at most 64 -t filters");
            }
            a.filters[a.n_filters++] = optarg;
            break;
        case 'q':
            if (parse_qos("sub", optarg, &a.qos)) {
                return EXIT_USAGE;
            }
            a.qos_given = true;
            break;
        case 'C':
            a.count = strtol(optarg, &end, 10);
            if (*end || a.count <= 0) {
                return usage_error("sub: -C needs a positive count, not '%s'", optarg);
            }
            break;
        case 'W':
            a.wait_s = strtol(optarg, &end, 10);
            if (*end || a.wait_s <= 0) {
                return usage_error("sub: -W needs a positive number of seconds, not '%s'", optarg);
            }
            break;
        case 'v':
            a.verbose = true;
            break;
        case 'J':
            json_out = true;
            break;
        default:
            return usage_error("sub: bad option");
        }
    }
    if (optind < argc) {
        return usage_error("sub: unexpected argument '%s'", argv[optind]);
    }
    if (!a.n_filters) {
        return usage_error("sub: -t FILTER is required");
    }
    *ret = a;
    return 0;
}

/* A subscribe that did not complete: ^C or SIGTERM meanwhile is a normal end, as later. */
static int sub_lost(int r)
{
    return r == -EINTR && interrupted ? 0 : lost(r);
}

/* Subscribe to each filter in turn: 0, or the exit status of the first failure (reported). */
static int subscribe_all(mqb_client *c, const SubArgs *a)
{
    if (a->session) { /* first: the subscriptions are then the session's */
        json_t *reply;
        int r = mqb_call(c, json_pack("{s:s, s:s}", "op", "session", "name", a->session), &reply,
                         timeout_ms);
        if (r < 0) {
            return sub_lost(r);
        }
        r = json_is_true(json_object_get(reply, "ok")) ? 0 : reply_failed(reply, a->session);
        json_decref(reply);
        if (r) {
            return r;
        }
    }
    /* Binary-safe output: ask for base64 unless the JSON lines are what we print. */
    for (int i = 0; i < a->n_filters; i++) {
        json_t *reply;
        json_t *req = json_pack("{s:s, s:s, s:i, s:s}", "op", "subscribe", "filter", a->filters[i],
                                "qos", a->qos, "encoding", json_out ? "auto" : "base64");
        if (req && a->no_local) {
            json_object_set_new(req, "no_local", json_true());
        }
        if (req && a->retain_as_published) {
            json_object_set_new(req, "retain_as_published", json_true());
        }
        /* In a session that already holds the filter, not the retained messages again. */
        int rh = a->retain_handling >= 0 ? a->retain_handling : a->session ? 1 : -1;
        if (req && rh >= 0) {
            json_object_set_new(req, "retain_handling", json_integer(rh));
        }
        int r = mqb_call(c, req, &reply, timeout_ms);
        if (r < 0) {
            return sub_lost(r);
        }
        if (!json_is_true(json_object_get(reply, "ok"))) {
            r = reply_failed(reply, a->filters[i]);
            json_decref(reply);
            return r;
        }
        json_decref(reply);
    }
    return 0;
}

/* A message event as mosquitto_sub prints it: the payload (after its topic with -v). */
static int print_message(json_t *m, bool verbose)
{
    const char *topic = json_string_value(json_object_get(m, "topic"));
    json_t *b64 = json_object_get(m, "payload_b64"), *text = json_object_get(m, "payload");
    Buf payload = {0};
    /* Text when a session's earlier subscription asked for it (the daemon sends a message as
     * its holder's encoding was when it came). */
    if (text ? buf_append(&payload, json_string_value(text), json_string_length(text)) < 0
             : base64_decode(&payload, VIEW(json_string_value(b64), json_string_length(b64))) < 0) {
        fprintf(stderr, "mqttctl: a message from the daemon has no valid payload\n");
    }
    int w = 0;
    if (verbose) {
        w |= write_all(topic, strlen(topic)) | write_all(" ", 1);
    }
    w |= write_all(payload.data, payload.len) | write_all("\n", 1);
    buf_free(&payload);
    return w;
}

/* Print one message from the daemon: -1 when stdout is closed, else 0. */
static int print_event(json_t *m, const SubArgs *a)
{
    const char *ev = json_string_value(json_object_get(m, "event"));
    bool verbose = a->verbose;
    if (!json_out && a->format && ev && strcmp(ev, "message") == 0) {
        return v5_print_format(m, a->format);
    }
    if (json_out) {
        char *s = json_dumps(m, JSON_COMPACT);
        int w = s ? write_all(s, strlen(s)) | write_all("\n", 1) : 0;
        free(s);
        return w;
    }
    if (ev && strcmp(ev, "message") == 0) {
        return print_message(m, verbose);
    }
    if (ev && strcmp(ev, "dropped") == 0) {
        fprintf(stderr, "mqttctl: the daemon dropped %lld messages: output too slow\n",
                (long long)json_integer_value(json_object_get(m, "count")));
    }
    return 0;
}

/* Print messages until -C COUNT of them came, -W SECONDS passed, a signal, or stdout closed:
 * the exit status. */
static int receive(mqb_client *c, const SubArgs *a)
{
    long got = 0;
    int64_t deadline = a->wait_s ? mono_us() / 1000 + a->wait_s * 1000 : -1;
    while (!interrupted && (!a->count || got < a->count)) {
        int left = deadline < 0 ? 500 : (int)(deadline - mono_us() / 1000);
        if (deadline >= 0 && left <= 0) {
            if (a->count) {
                fprintf(stderr, "mqttctl: timed out after %ld s (%ld of %ld messages)\n", a->wait_s,
                        got, a->count);
                return EXIT_DAEMON_ERROR;
            }
            return 0;
        }
        json_t *m;
        int r = mqb_next(c, &m, left > 500 ? 500 : left);
        if (r == 0 || r == -EINTR) {
            continue;
        }
        if (r < 0) {
            return lost(r);
        }
        const char *ev = json_string_value(json_object_get(m, "event"));
        if (ev && strcmp(ev, "message") == 0) {
            got++;
        }
        int w = print_event(m, a);
        json_t *seq = json_object_get(m, "seq");
        if (!w && a->session && seq) { /* printed: processed, as far as we are concerned */
            if (mqb_ack(c, (uint64_t)json_integer_value(seq)) < 0 || mqb_flush(c, timeout_ms) < 0) {
                json_decref(m);
                return lost(-EPIPE);
            }
        }
        json_decref(m);
        if (w) {
            break; /* stdout closed (SIGPIPE ignored): nothing left to do */
        }
    }
    return 0;
}

static int cmd_sub(int argc, char **argv)
{
    SubArgs a = {0};
    int r = parse_sub_args(argc, argv, &a);
    if (r) {
        return r;
    }
    mqb_client *c;
    if ((r = connect_daemon(&c))) {
        return r;
    }
    struct sigaction sa = {.sa_handler = on_signal};
    /* These cannot fail for valid signals and a valid handler. */
    (void)sigaction(SIGINT, &sa, NULL);
    (void)sigaction(SIGTERM, &sa, NULL);
    (void)signal(SIGPIPE, SIG_IGN);
    r = subscribe_all(c, &a);
    if (r == 0) {
        r = receive(c, &a);
    }
    mqb_close(c);
    return r;
}

/* ---- rr ---- */

typedef struct RrArgs {
    const char *topic, *message, *file;
    int qos;
    long wait_s;
    json_t *props;
} RrArgs;

static int parse_rr_args(int argc, char **argv, RrArgs *a)
{
    char err[256];
    int o;
    static const struct option opts[] = {{"json", no_argument, NULL, 'J'}, {0}};
    optind = 1;
    while ((o = getopt_long(argc, argv, "+t:m:f:q:W:D:", opts, NULL)) != -1) {
        char *end;
        switch (o) {
        case 't':
            a->topic = optarg;
            break;
        case 'm':
            a->message = optarg;
            break;
        case 'f':
            a->file = optarg;
            break;
        case 'q':
            if (parse_qos("rr", optarg, &a->qos)) {
                return EXIT_USAGE;
            }
            break;
        case 'W':
            a->wait_s = strtol(optarg, &end, 10);
            if (*end || a->wait_s <= 0 || a->wait_s > 86400) {
                return usage_error("rr: -W needs seconds from 1 to 86400, not '%s'", optarg);
            }
            break;
        case 'D':
            if (v5_define(a->props, optarg, argc, argv, &optind, err, sizeof(err)) < 0) {
                return usage_error("%s", err);
            }
            break;
        case 'J':
            json_out = true;
            break;
        default:
            return usage_error("rr: bad option");
        }
    }
    if (optind < argc) {
        return usage_error("rr: unexpected argument '%s'", argv[optind]);
    }
    if (!a->topic || (a->message != NULL) + (a->file != NULL) != 1) {
        return usage_error("rr: give -t TOPIC and one of -m MSG, -f FILE");
    }
    return 0;
}

/* The response's payload on stdout, as mosquitto_rr prints it. */
static int print_response(json_t *reply)
{
    json_t *resp = json_object_get(reply, "response");
    Buf b = {0};
    json_t *b64 = json_object_get(resp, "payload_b64");
    json_t *text = json_object_get(resp, "payload");
    int r = b64 ? base64_decode(&b, VIEW(json_string_value(b64), json_string_length(b64)))
                : buf_append(&b, json_string_value(text), json_string_length(text));
    if (r == 0) {
        r = write_all(b.data, b.len) | write_all("\n", 1);
    }
    buf_free(&b);
    return r ? EXIT_DAEMON_ERROR : 0;
}

static int rr_with(RrArgs *a)
{
    Buf payload = {0};
    int r;
    if (a->file && (r = read_all(a->file, &payload)) < 0) {
        fprintf(stderr, "mqttctl: cannot read %s: %s\n", a->file, strerror(-r));
        buf_free(&payload);
        return EXIT_USAGE;
    }
    View p = a->message ? VIEW_STR(a->message) : buf_view(&payload);
    json_t *req = a->props;
    long wait_ms = (a->wait_s ? a->wait_s : 10) * 1000;
    json_object_set_new(req, "op", json_string("request"));
    json_object_set_new(req, "topic", json_string(a->topic));
    json_object_set_new(req, "qos", json_integer(a->qos));
    json_object_set_new(req, "timeout_ms", json_integer(wait_ms));
    if (utf8_valid(p, true)) {
        json_object_set_new(req, "payload", json_stringn((const char *)p.p, p.n));
    } else {
        Buf enc = {0};
        if (base64_encode(&enc, p) == 0) {
            json_object_set_new(req, "payload_b64", json_stringn((const char *)enc.data, enc.len));
        }
        buf_free(&enc);
    }
    buf_free(&payload);
    mqb_client *c;
    if ((r = connect_daemon(&c))) {
        return r;
    }
    json_t *reply;
    r = mqb_call(c, json_incref(req), &reply, (int)wait_ms + 5000);
    mqb_close(c);
    if (r < 0) {
        return lost(r);
    }
    if (json_out) {
        print_json(reply);
    }
    if (!json_is_true(json_object_get(reply, "ok"))) {
        r = json_out ? EXIT_DAEMON_ERROR : reply_failed(reply, "rr");
    } else {
        r = json_out ? 0 : print_response(reply);
    }
    json_decref(reply);
    return r;
}

static int cmd_rr(int argc, char **argv)
{
    RrArgs a = {.props = json_object()};
    if (!a.props) {
        return usage_error("rr: out of memory");
    }
    int r = parse_rr_args(argc, argv, &a);
    if (r == 0) {
        r = rr_with(&a);
    }
    json_decref(a.props);
    return r;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"socket", required_argument, NULL, 's'},  {"json", no_argument, NULL, 'J'},
        {"timeout", required_argument, NULL, 'T'}, {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},       {0},
    };
    socket_path = getenv("MQTTBRIDGE_SOCKET");
    if (!socket_path || !*socket_path) {
        socket_path = DEFAULT_SOCKET;
    }
    int o;
    while ((o = getopt_long(argc, argv, "+s:h", opts, NULL)) != -1) {
        char *end;
        switch (o) {
        case 's':
            socket_path = optarg;
            break;
        case 'J':
            json_out = true;
            break;
        case 'T': {
            double t = strtod(optarg, &end);
            if (*end || t <= 0 || t > 86400) {
                return usage_error("--timeout needs seconds, not '%s'", optarg);
            }
            timeout_ms = (int)(t * 1000);
            break;
        }
        case 'h':
            usage(stdout);
            return 0;
        case 'V':
            printf("mqttctl %s\n", MQTTBRIDGE_VERSION);
            return 0;
        default:
            usage(stderr);
            return EXIT_USAGE;
        }
    }
    if (optind >= argc) {
        usage(stderr);
        return EXIT_USAGE;
    }
    char **args = argv + optind;
    int n = argc - optind;
    const char *cmd = args[0];
    /* --json may also follow the command. */
    for (int i = 1; i < n; i++) {
        if (strcmp(args[i], "--json") == 0) {
            json_out = true;
        }
    }
    if (strcmp(cmd, "pub") == 0) {
        return cmd_pub(n, args);
    }
    if (strcmp(cmd, "sub") == 0) {
        return cmd_sub(n, args);
    }
    if (strcmp(cmd, "rr") == 0) {
        return cmd_rr(n, args);
    }
    if (strcmp(cmd, "top") == 0) {
        return cmd_top(n, args);
    }
    if (strcmp(cmd, "stats") == 0) {
        int m = 0;
        for (int i = 0; i < n; i++) { /* drop --json, handled above */
            if (strcmp(args[i], "--json") != 0) {
                args[m++] = args[i];
            }
        }
        return cmd_stats(m, args);
    }
    for (int i = 1; i < n; i++) {
        if (strcmp(args[i], "--json") != 0) {
            return usage_error("unexpected argument '%s'", args[i]);
        }
    }
    if (strcmp(cmd, "status") == 0) {
        return cmd_status();
    }
    if (strcmp(cmd, "ping") == 0) {
        return cmd_ping();
    }
    if (strcmp(cmd, "reconnect") == 0 || strcmp(cmd, "reload") == 0) {
        return cmd_admin(cmd);
    }
    if (strcmp(cmd, "version") == 0) {
        return cmd_version();
    }
    if (strcmp(cmd, "sessions") == 0) {
        return cmd_sessions();
    }
    return usage_error("unknown command '%s'", cmd);
}

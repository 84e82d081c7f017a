/* SPDX-License-Identifier: MIT */
/*
 * mqttbridge-bench: what an application gets through mqttbridged, measured side by side with
 * the same workload done directly with libmosquitto (or mosquitto's tools) against the same
 * broker, in one run.
 *
 * It starts its own mosquitto on free loopback ports (plain and TLS, with a throw-away CA) and
 * its own daemon, then runs the cases (--only picks some): throughput and CPU per message
 * (QoS 0/1/2, 1 and 8 publishers), latency (one message in flight), the same two over TLS,
 * fan-out, fairness under a flood, 10 000 local clients, memory, and `mqttctl pub -l` against
 * `mosquitto_pub -l`. Ratios are computed within a run; the table gives their median and
 * spread over the runs. Nothing aborts a run: a message that does not arrive is counted in
 * the table (and, through the daemon, makes the exit status 1). See docs/performance.md.
 */
#include <errno.h>
#include <getopt.h>
#include <libgen.h>
#include <mosquitto.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bench.h"

int soak(long total)
{
    Conn sub, pub, admin;
    conn_open(&sub);
    conn_open(&admin);
    request(&sub, "{\"id\":0,\"op\":\"subscribe\",\"filter\":\"soak/#\",\"qos\":1}\n");
    conn_open(&pub);
    long step = total / 100, got = 0, replies = 0, dummy = 0;
    long rss_min = -1, rss_max = 0;
    char *buf = malloc(256 * 200);
    double t0 = now_s();
    for (long sent = 0; sent < total;) {
        size_t o = 0;
        for (int k = 0; k < 256 && sent < total; k++, sent++) {
            o += (size_t)sprintf(buf + o,
                                 "{\"id\":%ld,\"op\":\"publish\",\"topic\":\"soak/%ld\","
                                 "\"payload\":\"%s\",\"qos\":1}\n",
                                 sent, sent % 10, PAYLOAD);
        }
        send_all(pub.fd, buf, o);
        while (replies < sent) {
            conn_read(&pub, &replies, &dummy, NULL);
        }
        if (sent % step < 256) {
            request(&admin, "{\"id\":1,\"op\":\"reconnect\"}\n");
            long rss = daemon_mem().rss;
            if (sent > total / 10) { /* after warm-up */
                rss_min = rss_min < 0 || rss < rss_min ? rss : rss_min;
                rss_max = rss > rss_max ? rss : rss_max;
            }
            if (sent % (step * 10) < 256) {
                printf("soak: %7ld messages, daemon RSS %ld KiB\n", sent, rss);
            }
        }
        while (got < sent - 20000) {
            conn_read(&sub, &dummy, &got, NULL);
        }
    }
    while (got < total) {
        struct pollfd p = {.fd = sub.fd, .events = POLLIN};
        if (poll(&p, 1, 30000) <= 0) {
            break;
        }
        conn_read(&sub, &dummy, &got, NULL);
    }
    printf("soak: %ld QoS 1 messages, 100 reconnects in %.1f s; received %ld (at least once); "
           "daemon RSS after warm-up %ld..%ld KiB\n",
           total, now_s() - t0, got, rss_min, rss_max);
    free(buf);
    return got >= total ? 0 : 1;
}

static const struct {
    const char *name;
    void (*run)(int run);
} cases[] = {
    {"throughput", case_throughput}, {"latency", case_latency},   {"tls", case_tls},
    {"fanout", case_fanout},         {"fairness", case_fairness}, {"scale", case_scale},
    {"pub_lines", case_pub_lines},   {"memory", case_memory},
};

static bool wanted(const char *name)
{
    if (!opt.only) {
        return true;
    }
    size_t n = strlen(name);
    for (const char *p = opt.only; (p = strstr(p, name)); p += n) {
        if ((p == opt.only || p[-1] == ',') && (p[n] == ',' || p[n] == 0)) {
            return true;
        }
    }
    return false;
}

/* Every name in --only is a case's. */
static bool only_known(void)
{
    char list[512];
    snprintf(list, sizeof(list), "%s", opt.only);
    for (char *save, *name = strtok_r(list, ",", &save); name; name = strtok_r(NULL, ",", &save)) {
        size_t k = 0;
        while (k < sizeof(cases) / sizeof(cases[0]) && strcmp(cases[k].name, name) != 0) {
            k++;
        }
        if (k == sizeof(cases) / sizeof(cases[0])) {
            fprintf(stderr, "mqttbridge-bench: no case '%s' (see --help)\n", name);
            return false;
        }
    }
    return true;
}

static void cleanup(void)
{
    stop(&opt.daemon_pid);
    stop(&opt.broker_pid);
    if (getenv("BENCH_KEEP")) {
        fprintf(stderr, "mqttbridge-bench: kept %s\n", opt.dir);
        return;
    }
    char cmd[400];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", opt.dir);
    if (system(cmd) != 0) {
        fprintf(stderr, "mqttbridge-bench: could not remove %s\n", opt.dir);
    }
}

static void usage(FILE *f)
{
    fprintf(f, "Usage: mqttbridge-bench [--quick] [--json] [--runs N] [--only CASE,...]\n"
               "                        [--soak MESSAGES] [--daemon PATH] [--mqttctl PATH]\n"
               "                        [--protocol 5|3.1.1] [--trace]\n"
               "Runs each workload through mqttbridged and directly with libmosquitto against\n"
               "the same loopback mosquitto (started here), and reports both and their ratio.\n"
               "Cases:");
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        fprintf(f, " %s", cases[i].name);
    }
    fprintf(f, "\nThe daemon and mqttctl are found next to this program in its build tree\n"
               "(or $MQTTBRIDGED and $MQTTCTL, or the options). --trace prints, on stderr,\n"
               "where the CPUs went during each pass of the throughput and pub_lines cases.\n");
}

/* `rel` from this program's directory, when it is there: a build tree's layout. */
static void beside_me(char *out, size_t n, const char *env, const char *rel)
{
    if (getenv(env)) {
        snprintf(out, n, "%s", getenv(env));
        return;
    }
    char self[4096];
    ssize_t len = readlink("/proc/self/exe", self, sizeof(self) - 1);
    if (len > 0) {
        self[len] = 0;
        snprintf(out, n, "%s/%s", dirname(self), rel);
        if (access(out, X_OK) == 0) {
            return;
        }
    }
    snprintf(out, n, "%s", strrchr(rel, '/') + 1); /* from PATH: an installed one */
}

static int parse_args(int argc, char **argv)
{
    static const struct option opts[] = {
        {"quick", no_argument, NULL, 'q'},
        {"json", no_argument, NULL, 'j'},
        {"runs", required_argument, NULL, 'r'},
        {"soak", required_argument, NULL, 's'},
        {"daemon", required_argument, NULL, 'd'},
        {"mqttctl", required_argument, NULL, 'm'},
        {"protocol", required_argument, NULL, 'p'},
        {"only", required_argument, NULL, 'o'},
        {"trace", no_argument, NULL, 't'},
        {"help", no_argument, NULL, 'h'},
        {0},
    };
    beside_me(opt.daemon, sizeof(opt.daemon), "MQTTBRIDGED", "../../daemon/mqttbridged");
    beside_me(opt.mqttctl, sizeof(opt.mqttctl), "MQTTCTL", "../../clients/mqttctl");
    for (int o; (o = getopt_long(argc, argv, "h", opts, NULL)) != -1;) {
        switch (o) {
        case 'q':
            opt.quick = true;
            break;
        case 'j':
            opt.json = true;
            break;
        case 'r':
            opt.runs = atoi(optarg);
            break;
        case 's':
            opt.soak = atol(optarg);
            break;
        case 'd':
            snprintf(opt.daemon, sizeof(opt.daemon), "%s", optarg);
            break;
        case 'm':
            snprintf(opt.mqttctl, sizeof(opt.mqttctl), "%s", optarg);
            break;
        case 'p':
            opt.protocol = optarg;
            break;
        case 'o':
            opt.only = optarg;
            break;
        case 't':
            opt.trace = true;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    opt.runs = opt.quick ? 1 : opt.runs;
    if (opt.runs < 1 || opt.runs > MAX_RUNS) {
        fprintf(stderr, "mqttbridge-bench: --runs must be 1..%d\n", MAX_RUNS);
        return 2;
    }
    if (opt.only && !only_known()) {
        return 2;
    }
    return -1;
}

int main(int argc, char **argv)
{
    int status = parse_args(argc, argv);
    if (status >= 0) {
        return status;
    }
    signal(SIGPIPE, SIG_IGN);
    raise_nofile();
    mosquitto_lib_init();
    snprintf(opt.dir, sizeof(opt.dir), "/tmp/mqttbridge-bench.XXXXXX");
    if (!mkdtemp(opt.dir) || chmod(opt.dir, 0755) < 0) {
        die("mkdtemp");
    }
    snprintf(opt.sock, sizeof(opt.sock), "%s/mqttbridge.sock", opt.dir);
    snprintf(opt.ca, sizeof(opt.ca), "%s/ca.crt", opt.dir);
    atexit(cleanup);
    start_broker();
    start_daemon();
    if (opt.soak) {
        return soak(opt.soak);
    }
    for (int run = 0; run < opt.runs; run++) {
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
            if (wanted(cases[i].name)) {
                double waited = settle();
                if (opt.trace) {
                    fprintf(stderr,
                            "trace: %s, run %d: %.1f s for the daemon and the broker to go quiet\n",
                            cases[i].name, run + 1, waited);
                }
                cases[i].run(run);
            }
        }
    }
    (opt.json ? report_json : report_text)(stdout);
    return report_lost_ours() ? 1 : 0;
}

/* SPDX-License-Identifier: MIT */
/*
 * The workloads about local clients: fan-out, 10 000 connections, fairness under a flood, the
 * daemon's memory, and `mqttctl pub -l` against `mosquitto_pub -l`.
 */
#include <math.h>
#include <mosquitto.h>
#include <poll.h>
#include <sys/epoll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench.h"

/* ---- many local clients ---- */

typedef struct Fleet {
    Conn *c;
    int n;
} Fleet;

/* Up to n clients, each with `subs` subscriptions: `filter` and subs-1 idle ones (subs 0: a
 * ping only). How many could connect (the rest are counted by the caller). */
static int fleet_open(Fleet *f, int n, int subs, const char *filter)
{
    f->c = calloc((size_t)n, sizeof(*f->c));
    char *buf = malloc((size_t)(subs ? subs : 1) * 120 + 1);
    if (!f->c || !buf) {
        fail("out of memory");
    }
    for (f->n = 0; f->n < n; f->n++) {
        Conn *c = &f->c[f->n];
        if ((c->fd = unix_connect(opt.sock)) < 0) {
            break;
        }
        size_t o = 0;
        for (int k = 0; k < subs; k++) {
            o += (size_t)(k == 0 ? sprintf(buf + o,
                                           "{\"id\":%d,\"op\":\"subscribe\",\"filter\":\"%s\"}\n",
                                           k, filter)
                                 : sprintf(buf + o,
                                           "{\"id\":%d,\"op\":\"subscribe\",\"filter\":"
                                           "\"idle/%d/%d\"}\n",
                                           k, f->n, k));
        }
        if (subs == 0) {
            o = (size_t)sprintf(buf, "{\"id\":0,\"op\":\"ping\"}\n");
        }
        send_all(c->fd, buf, o);
        for (long replies = 0, msgs = 0; replies < (subs ? subs : 1);) {
            conn_read(c, &replies, &msgs, NULL);
        }
    }
    free(buf);
    return f->n;
}

static void fleet_close(Fleet *f)
{
    for (int i = 0; i < f->n; i++) {
        close(f->c[i].fd);
    }
    free(f->c);
}

/* Read the fleet until `want` message events arrived in all, or 5 s without one. */
static long fleet_receive(Fleet *f, long want)
{
    /* epoll, not poll: a poll of 10 000 descriptors per few messages would make the reader,
     * not the daemon, what is measured. */
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) {
        die("epoll_create1");
    }
    for (int i = 0; i < f->n; i++) {
        struct epoll_event e = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, f->c[i].fd, &e) < 0) {
            die("epoll_ctl");
        }
    }
    long got = 0, dummy = 0;
    struct epoll_event ready[256];
    while (got < want) {
        int k = epoll_wait(ep, ready, 256, 5000);
        if (k <= 0) {
            break;
        }
        for (int j = 0; j < k; j++) {
            conn_read(&f->c[ready[j].data.u32], &dummy, &got, NULL);
        }
    }
    close(ep);
    return got;
}

/* Daemon CPU microseconds per delivered message: `messages` to `clients` clients. */
static void fanout(int run, int clients, int subs, long messages)
{
    Fleet f;
    fleet_open(&f, clients, subs, "fan/+/v");
    Conn pub;
    conn_open(&pub);
    double cpu0 = daemon_cpu_s();
    char line[300];
    for (long i = 0; i < messages; i++) {
        snprintf(line, sizeof(line),
                 "{\"op\":\"publish\",\"topic\":\"fan/%ld/v\",\"payload\":\"%s\",\"wait\":false}\n",
                 i % 100, PAYLOAD);
        send_all(pub.fd, line, strlen(line));
    }
    long want = messages * f.n, got = fleet_receive(&f, want);
    Row *r = row("us", true, "fan-out, daemon CPU per delivery, %d subscriptions", clients * subs);
    row_set(r, run, (daemon_cpu_s() - cpu0) * 1e6 / (double)(got ? got : 1), NAN);
    r->lost_ours += want - got + (long)(clients - f.n) * messages;
    close(pub.fd);
    fleet_close(&f);
}

void case_fanout(int run)
{
    int big = opt.quick ? 100 : 1000;
    long msgs = opt.quick ? 50 : 2000;
    /* The same number of deliveries in both, so CPU time is measured as precisely. */
    fanout(run, big / 10, 1, msgs * 10);
    fanout(run, big, 10, msgs);
}

/* ---- pinging while something else happens ---- */

typedef struct Pinger {
    pthread_t thread;
    atomic_bool stop;
    double *rtt; /* microseconds */
    long n, cap;
    double wall;                        /* seconds it ran */
    unsigned long long wait_ns, slices; /* its own waits for a CPU (schedstat) */
} Pinger;

static void *pinger(void *arg)
{
    Pinger *p = arg;
    Conn c;
    conn_open(&c);
    unsigned long long w0, s0;
    (void)schedstat("/proc/thread-self/schedstat", &w0, &s0);
    double t0 = now_s();
    while (!atomic_load(&p->stop) && p->n < p->cap) {
        double t = now_s();
        request(&c, "{\"id\":1,\"op\":\"ping\"}\n");
        p->rtt[p->n++] = (now_s() - t) * 1e6;
        usleep(200); /* about 4 000 a second: a client that checks, not a second flood */
    }
    p->wall = now_s() - t0;
    (void)schedstat("/proc/thread-self/schedstat", &p->wait_ns, &p->slices);
    p->wait_ns -= w0;
    p->slices -= s0;
    close(c.fd);
    return NULL;
}

static void pinger_start(Pinger *p, long cap)
{
    *p = (Pinger){.rtt = malloc((size_t)cap * sizeof(double)), .cap = cap};
    if (!p->rtt || pthread_create(&p->thread, NULL, pinger, p) != 0) {
        fail("cannot start the pinger");
    }
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Stops it; its p50 and p99. */
static void pinger_stop(Pinger *p, double *p50, double *p99)
{
    atomic_store(&p->stop, true);
    pthread_join(p->thread, NULL);
    qsort(p->rtt, (size_t)p->n, sizeof(double), cmp_double);
    *p50 = p->n ? p->rtt[(p->n - 1) / 2] : NAN;
    *p99 = p->n ? p->rtt[(long)(0.99 * (double)(p->n - 1) + 0.5)] : NAN;
    free(p->rtt);
}

/* ---- fairness: one client floods, another pings ---- */

typedef struct Flood {
    pthread_t thread;
    atomic_bool stop;
    long sent;
} Flood;

/* Writes publishes as fast as the daemon reads them, reading back whatever it answers (a
 * full queue is answered), until told to stop: never blocked for long either way. */
static void *flooder(void *arg)
{
    Flood *f = arg;
    Conn c;
    conn_open(&c);
    enum { BATCH = 512 };
    char *out = malloc(BATCH * 160), sink[65536];
    size_t len = 0, off = 0;
    while (out && !atomic_load(&f->stop)) {
        if (off == len) {
            len = off = 0;
            for (int k = 0; k < BATCH; k++) {
                len += (size_t)sprintf(out + len,
                                       "{\"op\":\"publish\",\"topic\":\"flood\",\"payload\":"
                                       "\"%s\",\"wait\":false}\n",
                                       PAYLOAD);
            }
            f->sent += BATCH;
        }
        struct pollfd p = {.fd = c.fd, .events = POLLIN | POLLOUT};
        if (poll(&p, 1, 100) <= 0) {
            continue;
        }
        if ((p.revents & POLLIN) && read(c.fd, sink, sizeof(sink)) <= 0) {
            break;
        }
        ssize_t n = (p.revents & POLLOUT) ? send(c.fd, out + off, len - off, MSG_DONTWAIT) : 0;
        off += n > 0 ? (size_t)n : 0;
    }
    free(out);
    close(c.fd);
    return NULL;
}

void case_fairness(int run)
{
    double quiet50, quiet99, busy50, busy99, secs = opt.quick ? 0.3 : 3;
    Pinger p;
    pinger_start(&p, 1000000);
    usleep((useconds_t)(secs * 1e6)); /* measuring for a while: the pinger thread works */
    pinger_stop(&p, &quiet50, &quiet99);
    Flood f = {0};
    if (pthread_create(&f.thread, NULL, flooder, &f) != 0) {
        fail("cannot start the flooder");
    }
    usleep(100000); /* the flood under way */
    pinger_start(&p, 1000000);
    Sched s0 = daemon_sched();
    double t0 = now_s();
    usleep((useconds_t)(secs * 1e6));
    Sched s1 = daemon_sched();
    double wall = now_s() - t0;
    pinger_stop(&p, &busy50, &busy99);
    atomic_store(&f.stop, true);
    pthread_join(f.thread, NULL);
    row_set(row("us", true, "ping while another client floods QoS 0 (peer: quiet), p50"), run,
            busy50, quiet50);
    row_set(row("us", true, "ping while another client floods QoS 0 (peer: quiet), p99"), run,
            busy99, quiet99);
    /* What bounds the p99 on a machine with fewer cores than busy processes: the daemon,
     * runnable, waiting for the scheduler to give it a CPU back. */
    if (!s0.ok || !s1.ok) {
        return;
    }
    row_set(row("%", true, "flood: the daemon runnable but off CPU, share of the time"), run,
            100.0 * (double)(s1.wait_ns - s0.wait_ns) / (wall * 1e9), NAN);
    row_set(row("/s", true, "flood: the daemon preempted with work to do"), run,
            (double)(s1.preempted - s0.preempted) / wall, NAN);
    unsigned long long slices = s1.slices - s0.slices;
    row_set(row("us", true, "flood: the daemon's mean wait for a CPU"), run,
            slices ? (double)(s1.wait_ns - s0.wait_ns) / (double)slices / 1e3 : NAN, NAN);
    /* The pinger is a program on the same two cores: its own waits are in its round trips. */
    row_set(row("%", true, "flood: the pinger runnable but off CPU, share of the time"), run,
            100.0 * (double)p.wait_ns / (p.wall * 1e9), NAN);
    row_set(row("us", true, "flood: the pinger's mean wait for a CPU"), run,
            p.slices ? (double)p.wait_ns / (double)p.slices / 1e3 : NAN, NAN);
}

/* ---- scale: 10 000 local connections ---- */

void case_scale(int run)
{
    int n = opt.quick ? 500 : 10000;
    /* A fresh daemon: after the fairness case it is still sending the flood's backlog to the
     * broker (seconds of it, nothing lost), which the fan-out would wait behind. */
    stop(&opt.daemon_pid);
    start_daemon();
    Fleet f;
    double t0 = now_s();
    int connected = fleet_open(&f, n, 1, "scale/all");
    double setup = now_s() - t0;
    Pinger p;
    pinger_start(&p, 1000000);
    usleep(50000);
    Conn pub;
    conn_open(&pub);
    t0 = now_s();
    request(&pub, "{\"id\":1,\"op\":\"publish\",\"topic\":\"scale/all\",\"payload\":\"x\"}\n");
    long got = fleet_receive(&f, connected);
    double all = now_s() - t0, p50, p99;
    pinger_stop(&p, &p50, &p99);
    row_set(row("ms", true, "%d clients subscribed: connect and subscribe all", n), run,
            setup * 1e3, NAN);
    Row *r = row("ms", true, "%d clients subscribed: one message reaches all", n);
    row_set(r, run, all * 1e3, NAN);
    r->lost_ours += n - got;
    row_set(row("us", true, "%d clients subscribed: ping p99 meanwhile", n), run, p99, NAN);
    close(pub.fd);
    fleet_close(&f);
}

/* ---- memory ---- */

void case_memory(int run)
{
    int clients = opt.quick ? 100 : 1000, subs = 10;
    /* A fresh daemon, so earlier workloads' buffers do not count. */
    stop(&opt.daemon_pid);
    start_daemon();
    usleep(200000); /* settled after connecting */
    Mem idle = daemon_mem();
    Fleet f;
    fleet_open(&f, clients, 0, NULL);
    Mem with = daemon_mem();
    fleet_close(&f);
    stop(&opt.daemon_pid);
    start_daemon();
    Mem base = daemon_mem();
    fleet_open(&f, clients, subs, "mem/+/x");
    Mem subbed = daemon_mem();
    fleet_close(&f);
    double n_subs = (double)clients * subs;
    row_set(row("KiB", true, "memory idle, Pss_Anon"), run, (double)idle.pss_anon, NAN);
    row_set(row("KiB", true, "memory idle, RSS"), run, (double)idle.rss, NAN);
    row_set(row("KiB", true, "memory per idle client, Pss_Anon"), run,
            (double)(with.pss_anon - idle.pss_anon) / clients, NAN);
    row_set(row("KiB", true, "memory per idle client, RSS"), run,
            (double)(with.rss - idle.rss) / clients, NAN);
    /* Less what the same clients cost without subscriptions. */
    row_set(row("KiB", true, "memory per subscription, Pss_Anon"), run,
            (double)((subbed.pss_anon - base.pss_anon) - (with.pss_anon - idle.pss_anon)) / n_subs,
            NAN);
    row_set(row("KiB", true, "memory per subscription, RSS"), run,
            (double)((subbed.rss - base.rss) - (with.rss - idle.rss)) / n_subs, NAN);
}

/* ---- pub -l ---- */

static atomic_long lines_got;
static _Atomic double last_line; /* now_s() of the last line's arrival */

static void on_line(struct mosquitto *m, void *ud, const struct mosquitto_message *msg)
{
    (void)m, (void)ud, (void)msg;
    atomic_fetch_add(&lines_got, 1);
    atomic_store(&last_line, now_s());
}

/* The sender's wall time from start to exit, and its CPU time (with the daemon's). */
static double run_timed(char *const argv[], const char *input, double *cpu)
{
    char log[400];
    snprintf(log, sizeof(log), "%s/pub.log", opt.dir);
    struct rusage before, after;
    getrusage(RUSAGE_CHILDREN, &before);
    double t0 = now_s(), d0 = daemon_cpu_s();
    pid_t pid = spawn(argv, log, input);
    int status;
    waitpid(pid, &status, 0);
    double wall = now_s() - t0;
    getrusage(RUSAGE_CHILDREN, &after);
    bool ours = strcmp(argv[0], opt.mqttctl) == 0;
    *cpu = (double)(after.ru_utime.tv_sec - before.ru_utime.tv_sec + after.ru_stime.tv_sec -
                    before.ru_stime.tv_sec) +
           (double)(after.ru_utime.tv_usec - before.ru_utime.tv_usec + after.ru_stime.tv_usec -
                    before.ru_stime.tv_usec) /
               1e6 +
           (ours ? daemon_cpu_s() - d0 : 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status)) {
        fprintf(stderr, "mqttbridge-bench: %s failed (see %s)\n", argv[0], log);
    }
    return wall;
}

static void pub_lines(int run, int qos, long n, const char *input)
{
    char port[16], q[4];
    snprintf(port, sizeof(port), "%d", opt.port);
    snprintf(q, sizeof(q), "%d", qos);
    char *ctl[] = {opt.mqttctl, "-s", opt.sock, "pub", "-t", "lines", "-q", q, "-l", NULL};
    char *mosq[] = {"mosquitto_pub", "-h", "127.0.0.1", "-p", port, "-t",
                    "lines",         "-q", q,           "-l", NULL};
    double rate[2], cpu[2];
    long lost[2];
    for (int pass = 0; pass < 2; pass++) {
        atomic_store(&lines_got, 0);
        atomic_store(&last_line, 0.0);
        struct mosquitto *sub = direct_client(NULL);
        direct_subscribe(sub, "lines", qos);
        mosquitto_message_callback_set(sub, on_line);
        mosquitto_loop_start(sub);
        Probe probe = probe_start();
        double t0 = now_s(), t = run_timed(pass == 0 ? ctl : mosq, input, &cpu[pass]);
        long seen = -1;
        for (double quiet = now_s(); atomic_load(&lines_got) < n && now_s() - quiet < 2;) {
            if (atomic_load(&lines_got) != seen) {
                seen = atomic_load(&lines_got), quiet = now_s();
            }
            usleep(10000); /* what is still on its way: waiting for the counter to settle */
        }
        /* Lines that arrived, per second from the start to the sender's exit or the last
         * arrival, whichever is later: a sender that exits with lines unsent (mosquitto_pub
         * at QoS 1) is measured by what it delivered, one that leaves lines to the daemon by
         * when they got there. */
        long got = atomic_load(&lines_got);
        double span = fmax(t, atomic_load(&last_line) - t0);
        char what[64];
        snprintf(what, sizeof(what), "pub -l QoS %d, %s (the sender exited after %.2f s)", qos,
                 pass == 0 ? "mqttctl" : "mosquitto_pub", t);
        probe_print(&probe, what, got, span);
        lost[pass] = n - got;
        rate[pass] = (double)got / span;
        cpu[pass] = cpu[pass] * 1e6 / (double)(got ? got : 1);
        direct_close(sub, true);
    }
    Row *r = row("delivered/s", false, "mqttctl pub -l (peer: mosquitto_pub -l), QoS %d", qos);
    row_set(r, run, rate[0], rate[1]);
    row_cpu(r, run, cpu[0], cpu[1]);
    r->lost_ours += lost[0];
    r->lost_peer += lost[1];
}

void case_pub_lines(int run)
{
    long n = opt.quick ? 2000 : 200000;
    char input[400];
    snprintf(input, sizeof(input), "%s/lines.txt", opt.dir);
    FILE *f = fopen(input, "w");
    for (long i = 0; f && i < n; i++) {
        fprintf(f, "line %ld %s\n", i, PAYLOAD);
    }
    if (!f || fclose(f) != 0) {
        die(input);
    }
    pub_lines(run, 0, n, input);
    pub_lines(run, 1, n, input);
}

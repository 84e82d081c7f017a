/* SPDX-License-Identifier: MIT */
/*
 * The workloads: each runs through the daemon and, where there is one, the same thing directly
 * with libmosquitto (or mosquitto's tools) against the same broker, back to back, and records
 * a row of the table (report.c). A message that does not arrive is counted, never fatal.
 */
#include <math.h>
#include <mosquitto.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench.h"

/* ---- waiting on counters other threads advance ---- */

/* Waiting threads sleep on this, never spin: a spinning load generator would steal the
 * broker's CPU on a 2-core machine. They are woken only when a counter reached what one of
 * them waits for, and progress() finds that out without the lock: a lock, let alone a wake-up,
 * for every message would cost each side a futex a message, measured as that side's CPU. */
static pthread_mutex_t progress_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t progress_cv = PTHREAD_COND_INITIALIZER;
static atomic_int sleepers; /* progress() costs nothing while nobody waits */
enum { MAX_WAITERS = 16 };
static struct {
    _Atomic(atomic_long *) counter; /* NULL: a free slot; set and cleared under progress_mu */
    atomic_long target;
} waiting[MAX_WAITERS];

/* After *counter moved. A waiter stores its slot, then reads the counter; this stores the
 * counter, then reads the slots: (sequentially consistent) one of the two sees the other. */
static void progress(atomic_long *counter)
{
    if (!atomic_load(&sleepers)) {
        return;
    }
    long now = atomic_load(counter);
    for (int i = 0; i < MAX_WAITERS; i++) {
        if (atomic_load(&waiting[i].counter) == counter && now >= atomic_load(&waiting[i].target)) {
            pthread_mutex_lock(&progress_mu); /* the waiter holds it until it sleeps */
            pthread_cond_broadcast(&progress_cv);
            pthread_mutex_unlock(&progress_mu);
            return;
        }
    }
}

static int waiter_add(atomic_long *counter, long target)
{
    for (int i = 0; i < MAX_WAITERS; i++) {
        if (!atomic_load(&waiting[i].counter)) {
            atomic_store(&waiting[i].target, target);
            atomic_store(&waiting[i].counter, counter);
            return i;
        }
    }
    fail("more than %d threads wait at once", MAX_WAITERS);
}

/* Sleep until *counter reaches target; false once it has not moved for `stall` seconds, so a
 * lost message costs a moment, never the run. A look every 10 ms sees whether it moves. */
static bool await_count(atomic_long *counter, long target, double stall)
{
    long seen = atomic_load(counter);
    double last_move = now_s();
    pthread_mutex_lock(&progress_mu);
    int slot = waiter_add(counter, target);
    atomic_fetch_add(&sleepers, 1);
    while (atomic_load(counter) < target) {
        long now = atomic_load(counter);
        if (now != seen) {
            seen = now;
            last_move = now_s();
        } else if (now_s() - last_move > stall) {
            break;
        }
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 10000000;
        if (ts.tv_nsec >= 1000000000) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000;
        }
        pthread_cond_timedwait(&progress_cv, &progress_mu, &ts);
    }
    atomic_fetch_sub(&sleepers, 1);
    atomic_store(&waiting[slot].counter, NULL);
    pthread_mutex_unlock(&progress_mu);
    return atomic_load(counter) >= target;
}

/* ---- direct libmosquitto clients ---- */

static void on_message(struct mosquitto *m, void *ud, const struct mosquitto_message *msg);

/* On the TLS listener when opt.tls; through the relay at `unix_path` when it is not NULL (the
 * relay forwards to the listener, so TLS is still end to end, without the host name to check). */
static struct mosquitto *direct_client_via(void *ud, const char *unix_path)
{
    struct mosquitto *m = mosquitto_new(NULL, true, ud);
    if (!m) {
        fail("libmosquitto: out of memory");
    }
    mosquitto_int_option(m, MOSQ_OPT_TCP_NODELAY, 1);
    if (opt.tls && (mosquitto_tls_set(m, ca_file(), NULL, NULL, NULL, NULL) != MOSQ_ERR_SUCCESS ||
                    mosquitto_tls_insecure_set(m, unix_path != NULL) != MOSQ_ERR_SUCCESS)) {
        fail("libmosquitto: cannot use %s", ca_file());
    }
    /* Port 0: libmosquitto connects to the Unix socket named as the host. */
    int r = unix_path ? mosquitto_connect(m, unix_path, 0, 60)
                      : mosquitto_connect(m, "127.0.0.1", opt.tls ? opt.tls_port : opt.port, 60);
    if (r != MOSQ_ERR_SUCCESS) {
        fail("libmosquitto cannot connect%s%s", unix_path ? " to " : "",
             unix_path ? unix_path : "");
    }
    return m;
}

struct mosquitto *direct_client(void *ud)
{
    return direct_client_via(ud, NULL);
}

static atomic_int subacked;

static void on_subscribe(struct mosquitto *m, void *ud, int mid, int n, const int *granted)
{
    (void)m, (void)ud, (void)mid, (void)n, (void)granted;
    atomic_store(&subacked, 1);
}

/* Subscribe and wait for the SUBACK (before the loop thread runs): what is published after
 * this returns is delivered. */
void direct_subscribe(struct mosquitto *m, const char *filter, int qos)
{
    atomic_store(&subacked, 0);
    mosquitto_subscribe_callback_set(m, on_subscribe);
    mosquitto_subscribe(m, NULL, filter, qos);
    double give_up = now_s() + 10;
    while (!atomic_load(&subacked) && now_s() < give_up) {
        mosquitto_loop(m, 100, 1);
    }
    if (!atomic_load(&subacked)) {
        fail("no SUBACK for the direct subscriber");
    }
}

void direct_close(struct mosquitto *m, bool threaded)
{
    mosquitto_disconnect(m);
    if (threaded) {
        mosquitto_loop_stop(m, false);
    }
    mosquitto_destroy(m);
}

/* ---- throughput ---- */

/* End to end, at most E2E_WINDOW messages published and not yet received, for the daemon and
 * the direct runs alike: otherwise the broker's queue toward a slower subscriber grows without
 * bound and measures mosquitto's queue handling instead of the clients. */
#define E2E_WINDOW 8192
#define PUB_WINDOW 2048 /* unconfirmed publishes per publisher, daemon and direct alike */
static atomic_long e2e_sent, e2e_received;

static void e2e_wait(long more)
{
    long target = atomic_load(&e2e_sent) + more - E2E_WINDOW;
    if (atomic_load(&e2e_received) < target) {
        (void)await_count(&e2e_received, target, 5); /* a lost message must not stop them */
    }
    atomic_fetch_add(&e2e_sent, more);
}

static void on_message(struct mosquitto *m, void *ud, const struct mosquitto_message *msg)
{
    (void)m, (void)msg;
    atomic_fetch_add((atomic_long *)ud, 1);
    atomic_fetch_add(&e2e_received, 1);
    progress(ud);
    progress(&e2e_received);
}

static void on_publish(struct mosquitto *m, void *ud, int mid)
{
    (void)m, (void)mid;
    atomic_fetch_add((atomic_long *)ud, 1);
    progress(ud);
}

typedef struct Job {
    int qos;
    long count;
    const char *topic;
    long failures;
} Job;

static void *daemon_publisher(void *arg)
{
    Job *j = arg;
    Conn c;
    conn_open(&c);
    enum { BATCH = 256 };
    char *out = malloc(BATCH * 200);
    long sent = 0, replies = 0, msgs = 0;
    while (replies < j->count) {
        if (sent < j->count && sent - replies <= PUB_WINDOW - BATCH) {
            e2e_wait(j->count - sent < BATCH ? j->count - sent : BATCH);
            size_t o = 0;
            for (int k = 0; k < BATCH && sent < j->count; k++, sent++) {
                o += (size_t)sprintf(out + o,
                                     "{\"id\":%ld,\"op\":\"publish\",\"topic\":\"%s\","
                                     "\"payload\":\"%s\",\"qos\":%d}\n",
                                     sent, j->topic, PAYLOAD, j->qos);
            }
            send_all(c.fd, out, o);
            continue;
        }
        conn_read(&c, &replies, &msgs, &j->failures);
    }
    free(out);
    close(c.fd);
    return NULL;
}

static void *direct_publisher(void *arg)
{
    Job *j = arg;
    atomic_long done = 0;
    struct mosquitto *m = direct_client(&done);
    mosquitto_publish_callback_set(m, on_publish);
    mosquitto_loop_start(m);
    enum { BATCH = 256 }; /* as the daemon's publishers account for their messages */
    for (long i = 0; i < j->count; i++) {
        if (i % BATCH == 0) {
            /* The same window of unconfirmed messages as the daemon's publishers get. */
            long more = j->count - i < BATCH ? j->count - i : BATCH;
            if (atomic_load(&done) < i + more - PUB_WINDOW) {
                (void)await_count(&done, i + more - PUB_WINDOW, 5);
            }
            e2e_wait(more);
        }
        mosquitto_publish(m, NULL, j->topic, 64, PAYLOAD, j->qos, false);
    }
    (void)await_count(&done, j->count, 5); /* libmosquitto's own thread completes them */
    direct_close(m, true);
    return NULL;
}

typedef struct Flow {
    double rate, cpu_us; /* messages a second; CPU microseconds per message */
    long lost;
} Flow;

/* The daemon's subscriber: reads until `want` messages or 5 s without one. */
static long daemon_receive(Conn *c, long want)
{
    long msgs = 0, replies = 0;
    while (msgs < want) {
        struct pollfd p = {.fd = c->fd, .events = POLLIN};
        if (poll(&p, 1, 5000) <= 0) {
            break;
        }
        conn_read(c, &replies, &msgs, NULL);
        atomic_store(&e2e_received, msgs);
        progress(&e2e_received);
    }
    return msgs;
}

static Flow flow(bool via_daemon, int qos, int n_pub, long count)
{
    atomic_long received = 0;
    struct mosquitto *sub = NULL;
    Conn c;
    char line[200], topic[8][32];
    snprintf(line, sizeof(line), "{\"id\":0,\"op\":\"subscribe\",\"filter\":\"tp/#\",\"qos\":%d}\n",
             qos);
    if (via_daemon) {
        conn_open(&c);
        request(&c, line);
    } else {
        sub = direct_client(&received);
        mosquitto_message_callback_set(sub, on_message);
        direct_subscribe(sub, "tp/#", qos);
        mosquitto_loop_start(sub);
    }
    pthread_t t[8];
    Job jobs[8];
    atomic_store(&e2e_sent, 0);
    atomic_store(&e2e_received, 0);
    Probe probe = probe_start(); /* outside the CPU measured for the row */
    double t0 = now_s(), cpu0 = self_cpu_s() + (via_daemon ? daemon_cpu_s() : 0);
    for (int i = 0; i < n_pub; i++) {
        snprintf(topic[i], sizeof(topic[i]), "tp/%d", i);
        jobs[i] = (Job){.qos = qos, .count = count / n_pub, .topic = topic[i]};
        pthread_create(&t[i], NULL, via_daemon ? daemon_publisher : direct_publisher, &jobs[i]);
    }
    long want = count / n_pub * n_pub, msgs;
    if (via_daemon) {
        msgs = daemon_receive(&c, want);
    } else {
        (void)await_count(&received, want, 5);
        msgs = atomic_load(&received);
    }
    double elapsed = now_s() - t0;
    for (int i = 0; i < n_pub; i++) {
        pthread_join(t[i], NULL);
    }
    double cpu = self_cpu_s() + (via_daemon ? daemon_cpu_s() : 0) - cpu0;
    char what[64];
    snprintf(what, sizeof(what), "%sthroughput QoS %d, %d publisher(s), %s", opt.tls ? "TLS " : "",
             qos, n_pub, via_daemon ? "ours" : "direct");
    probe_print(&probe, what, msgs, elapsed);
    if (via_daemon) {
        close(c.fd);
    } else {
        direct_close(sub, true);
    }
    return (Flow){msgs / elapsed, cpu * 1e6 / (double)(msgs ? msgs : 1), want - msgs};
}

static void throughput(int run, const char *label, long count)
{
    static const int cases[][2] = {{0, 1}, {0, 8}, {1, 1}, {1, 8}, {2, 1}, {2, 8}};
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int qos = cases[i][0], pubs = cases[i][1];
        /* Direct first, then through the daemon: the pair runs back to back. */
        Flow direct = flow(false, qos, pubs, count), ours = flow(true, qos, pubs, count);
        Row *r = row("msg/s", false, "%sthroughput QoS %d, %d publisher%s", label, qos, pubs,
                     pubs > 1 ? "s" : "");
        row_set(r, run, ours.rate, direct.rate);
        row_cpu(r, run, ours.cpu_us, direct.cpu_us);
        r->lost_ours += ours.lost;
        r->lost_peer += direct.lost;
    }
}

void case_throughput(int run)
{
    throughput(run, "", opt.quick ? 2000 : 200000);
}

/* ---- latency: one message in flight ---- */

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double pct(const double *sorted, long n, double p)
{
    return sorted[(long)(p * (double)(n - 1) + 0.5)];
}

static atomic_int echo;

static void on_echo(struct mosquitto *m, void *ud, const struct mosquitto_message *msg)
{
    (void)m, (void)ud, (void)msg;
    atomic_store(&echo, 1);
}

/* The three ways one round trip is taken: through the daemon, directly, and directly through
 * the bare relay (relay.c), each subscribed to its own echo (lat/ours, lat/direct,
 * lat/relayed). */
typedef struct Trips {
    Conn ours;
    char line[300];
    struct mosquitto *direct, *relayed;
    double *rtt[3]; /* microseconds, [ours, direct, relayed] */
} Trips;

static void trips_open(Trips *t, int qos, long n, const char *relay)
{
    conn_open(&t->ours);
    snprintf(t->line, sizeof(t->line),
             "{\"id\":0,\"op\":\"subscribe\",\"filter\":\"lat/ours\",\"qos\":%d}\n", qos);
    request(&t->ours, t->line);
    snprintf(t->line, sizeof(t->line),
             "{\"op\":\"publish\",\"topic\":\"lat/ours\",\"payload\":\"%s\",\"qos\":%d,"
             "\"wait\":false}\n",
             PAYLOAD, qos);
    t->direct = direct_client_via(NULL, NULL);
    t->relayed = direct_client_via(NULL, relay);
    struct mosquitto *both[] = {t->direct, t->relayed};
    for (int i = 0; i < 2; i++) {
        mosquitto_message_callback_set(both[i], on_echo);
        direct_subscribe(both[i], i ? "lat/relayed" : "lat/direct", qos);
    }
    for (int i = 0; i < 3; i++) {
        if (!(t->rtt[i] = malloc((size_t)n * sizeof(double)))) {
            fail("out of memory");
        }
    }
}

static void trips_close(Trips *t)
{
    close(t->ours.fd);
    direct_close(t->direct, false);
    direct_close(t->relayed, false);
    for (int i = 0; i < 3; i++) {
        free(t->rtt[i]);
    }
}

static double trip_ours(Trips *t)
{
    long replies = 0, msgs = 0;
    double t0 = now_s();
    send_all(t->ours.fd, t->line, strlen(t->line));
    while (msgs == 0) {
        conn_read(&t->ours, &replies, &msgs, NULL);
    }
    return (now_s() - t0) * 1e6;
}

static double trip_direct(struct mosquitto *m, const char *topic, int qos)
{
    atomic_store(&echo, 0);
    double t0 = now_s();
    mosquitto_publish(m, NULL, topic, 64, PAYLOAD, qos, false);
    while (!atomic_load(&echo)) {
        mosquitto_loop(m, 1000, 1);
    }
    double us = (now_s() - t0) * 1e6;
    /* What came with the echo (a PUBACK, a reply) is read before the next round starts. */
    mosquitto_loop(m, 0, 1);
    return us;
}

/* In blocks of 500 round trips, the three ways in turn: the machine's drift over the case
 * (seen here: the direct p50 moves by half between runs of the same hour) hits all alike. */
static void round_trips(Trips *t, int qos, long n)
{
    long replies = 0, msgs = 0;
    for (long i = 0; i < n; i += 500) {
        long end = i + 500 < n ? i + 500 : n;
        for (long k = i; k < end; k++) {
            t->rtt[0][k] = trip_ours(t);
        }
        struct pollfd p = {.fd = t->ours.fd, .events = POLLIN};
        while (poll(&p, 1, 0) > 0) { /* the last reply, so the next block starts clean */
            conn_read(&t->ours, &replies, &msgs, NULL);
        }
        for (long k = i; k < end; k++) {
            t->rtt[1][k] = trip_direct(t->direct, "lat/direct", qos);
        }
        for (long k = i; k < end; k++) {
            t->rtt[2][k] = trip_direct(t->relayed, "lat/relayed", qos);
        }
    }
}

static void latency_rows(int run, const char *label, int qos, Trips *t, long n)
{
    for (int i = 0; i < 3; i++) {
        qsort(t->rtt[i], (size_t)n, sizeof(double), cmp_double);
    }
    double *d = t->rtt[0], *m = t->rtt[1], *r = t->rtt[2];
    row_set(row("us", true, "%slatency QoS %d, p50", label, qos), run, pct(d, n, 0.5),
            pct(m, n, 0.5));
    row_set(row("us", true, "%slatency QoS %d, p99", label, qos), run, pct(d, n, 0.99),
            pct(m, n, 0.99));
    row_set(row("us", true, "%slatency QoS %d, added p50", label, qos), run,
            pct(d, n, 0.5) - pct(m, n, 0.5), NAN);
    /* The floor: a direct client through a relay that only copies bytes crosses the same two
     * extra sockets and process wake-ups as a message through the daemon. */
    row_set(row("us", true, "%slatency QoS %d, added p50 by a bare relay", label, qos), run,
            pct(r, n, 0.5) - pct(m, n, 0.5), NAN);
}

static void latency(int run, const char *label, long n)
{
    char path[320];
    snprintf(path, sizeof(path), "%s/relay.sock", opt.dir);
    unlink(path);
    pid_t relay = relay_start(path, opt.tls ? opt.tls_port : opt.port);
    for (int qos = 0; qos <= 1; qos++) {
        Trips t;
        trips_open(&t, qos, n, path);
        round_trips(&t, qos, n);
        latency_rows(run, label, qos, &t, n);
        trips_close(&t);
    }
    stop(&relay);
}

void case_latency(int run)
{
    latency(run, "", opt.quick ? 200 : 20000);
}

/* ---- over TLS: the same against mosquitto's TLS listener ---- */

void case_tls(int run)
{
    opt.tls = true;
    stop(&opt.daemon_pid);
    start_daemon();
    throughput(run, "TLS ", opt.quick ? 2000 : 100000);
    latency(run, "TLS ", opt.quick ? 200 : 10000);
    opt.tls = false;
    stop(&opt.daemon_pid);
    start_daemon();
}

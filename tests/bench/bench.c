/* SPDX-License-Identifier: MIT */
/*
 * mqttbridge-bench: what an application gets through mqttbridged, measured side by side with
 * the same workload done directly with libmosquitto against the same broker, in one run.
 *
 * It starts its own mosquitto on a free loopback port and its own daemon, then runs:
 * throughput (QoS 0/1/2, 1 and 8 publishers), latency (one message in flight), fan-out (CPU
 * per delivered message at 100 and 10 000 subscriptions), memory (RSS idle, per client, per
 * subscription), and `mqttctl pub -l` against `mosquitto_pub -l`. Ratios are computed pair by
 * pair within a run; the median over runs is reported. See docs/performance.md.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <mosquitto.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static struct {
    bool quick, json;
    int runs;
    long soak;
    const char *daemon, *mqttctl;
    const char *protocol; /* [broker] protocol for the daemon, NULL: its default */
    char dir[256], sock[300];
    int port;
    pid_t broker_pid, daemon_pid;
} opt = {.runs = 3};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what)
{
    fprintf(stderr, "mqttbridge-bench: %s: %s\n", what, strerror(errno));
    exit(2);
}

/* ---- processes ---- */

static pid_t spawn(char *const argv[], const char *log, const char *in)
{
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, log, O_WRONLY | O_CREAT | O_APPEND, 0644);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    if (in) {
        posix_spawn_file_actions_addopen(&fa, 0, in, O_RDONLY, 0);
    }
    pid_t pid;
    if (posix_spawnp(&pid, argv[0], &fa, NULL, argv, environ) != 0) {
        die(argv[0]);
    }
    posix_spawn_file_actions_destroy(&fa);
    return pid;
}

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    if (bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 ||
        getsockname(fd, (struct sockaddr *)&a, &len) < 0) {
        die("free port");
    }
    close(fd);
    return ntohs(a.sin_port);
}

static int unix_connect(const char *path)
{
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof(a.sun_path)) {
        return -1;
    }
    memcpy(a.sun_path, path, strlen(path) + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
        if (fd >= 0) {
            close(fd);
        }
        return -1;
    }
    return fd;
}

static bool tcp_up(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    bool ok = connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0;
    close(fd);
    return ok;
}

static void wait_for(bool (*ready)(void), const char *what)
{
    for (int i = 0; i < 400; i++) {
        if (ready()) {
            return;
        }
        usleep(25000); /* polling a child's start-up, bounded to 10 s */
    }
    fprintf(stderr, "mqttbridge-bench: %s did not come up\n", what);
    exit(2);
}

static bool broker_ready(void)
{
    return tcp_up(opt.port);
}

static bool daemon_ready(void)
{
    int fd = unix_connect(opt.sock);
    if (fd < 0) {
        return false;
    }
    /* ...and connected to the broker. */
    const char *q = "{\"op\":\"status\"}\n";
    char buf[4096];
    bool ok = write(fd, q, strlen(q)) > 0 && read(fd, buf, sizeof(buf) - 1) > 0 &&
              strstr(buf, "\"connected\":true");
    close(fd);
    return ok;
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (!f || fputs(text, f) < 0 || fclose(f) != 0) {
        die(path);
    }
}

static void start_daemon(void)
{
    char conf[400], log[400], text[1024];
    snprintf(conf, sizeof(conf), "%s/mqttbridged.conf", opt.dir);
    snprintf(log, sizeof(log), "%s/mqttbridged.log", opt.dir);
    snprintf(text, sizeof(text),
             "[broker]\nhost = 127.0.0.1:%d\n%s%s%s[ipc]\nsocket = %s\nmax_clients = 4096\n"
             "client_buffer = 64M\n[queue]\nmax_messages = 4000000\nmax_bytes = 2G\n"
             "[log]\nlevel = warning\n",
             opt.port, opt.protocol ? "protocol = " : "", opt.protocol ? opt.protocol : "",
             opt.protocol ? "\n" : "", opt.sock);
    write_file(conf, text);
    char *argv[] = {(char *)opt.daemon, "-c", conf, NULL};
    opt.daemon_pid = spawn(argv, log, NULL);
    wait_for(daemon_ready, "mqttbridged");
}

static void stop(pid_t *pid)
{
    if (*pid > 0) {
        kill(*pid, SIGTERM);
        waitpid(*pid, NULL, 0);
        *pid = 0;
    }
}

static void start_all(void)
{
    char conf[400], log[400], text[512];
    opt.port = free_port();
    snprintf(conf, sizeof(conf), "%s/mosquitto.conf", opt.dir);
    snprintf(log, sizeof(log), "%s/mosquitto.log", opt.dir);
    snprintf(text, sizeof(text),
             "listener %d 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n"
             "max_queued_messages 0\nmax_queued_bytes 0\nlog_dest none\n",
             opt.port);
    write_file(conf, text);
    char *argv[] = {"mosquitto", "-c", conf, NULL};
    opt.broker_pid = spawn(argv, log, NULL);
    wait_for(broker_ready, "mosquitto");
    start_daemon();
}

static long daemon_rss_kib(void)
{
    char path[64], line[256];
    snprintf(path, sizeof(path), "/proc/%d/status", (int)opt.daemon_pid);
    FILE *f = fopen(path, "r");
    long kib = -1;
    while (f && fgets(line, sizeof(line), f)) {
        if (sscanf(line, "VmRSS: %ld", &kib) == 1) {
            break;
        }
    }
    if (f) {
        fclose(f);
    }
    return kib;
}

static double daemon_cpu_s(void)
{
    char path[64], buf[1024];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)opt.daemon_pid);
    FILE *f = fopen(path, "r");
    if (!f || !fgets(buf, sizeof(buf), f)) {
        die(path);
    }
    fclose(f);
    unsigned long ut = 0, st = 0;
    char *p = strrchr(buf, ')');
    sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st);
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

/* ---- a raw daemon client: writes request lines, counts reply and message lines ---- */

typedef struct Conn {
    int fd;
    char in[1 << 16];
    size_t in_len;
} Conn;

static void conn_open(Conn *c)
{
    c->fd = unix_connect(opt.sock);
    c->in_len = 0;
    if (c->fd < 0) {
        die(opt.sock);
    }
}

static void send_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) {
            continue;
        }
        if (w <= 0) {
            die("write to the daemon");
        }
        p += w;
        n -= (size_t)w;
    }
}

/* Read what is there; count whole lines as replies or message events. */
static void conn_read(Conn *c, long *replies, long *messages, long *failures)
{
    ssize_t n = read(c->fd, c->in + c->in_len, sizeof(c->in) - c->in_len);
    if (n <= 0) {
        if (n < 0 && errno == EINTR) {
            return;
        }
        die("read from the daemon");
    }
    c->in_len += (size_t)n;
    char *start = c->in, *nl;
    while ((nl = memchr(start, '\n', c->in_len - (size_t)(start - c->in)))) {
        if (strncmp(start, "{\"event\":\"message\"", 18) == 0) {
            (*messages)++;
        } else if (strncmp(start, "{\"id\":", 6) == 0) {
            (*replies)++;
            if (failures && memmem(start, (size_t)(nl - start), "\"ok\":false", 10)) {
                (*failures)++;
            }
        }
        start = nl + 1;
    }
    c->in_len -= (size_t)(start - c->in);
    memmove(c->in, start, c->in_len);
}

static void request(Conn *c, const char *line)
{
    send_all(c->fd, line, strlen(line));
    long replies = 0, msgs = 0;
    while (replies == 0) {
        conn_read(c, &replies, &msgs, NULL);
    }
}

static const char PAYLOAD[] = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/* ---- throughput ---- */

typedef struct Job {
    int qos;
    long count;
    const char *topic;
    long failures;
} Job;

/* End to end, at most E2E_WINDOW messages published and not yet received, for the daemon and
 * the direct runs alike: otherwise the broker's queue toward a slower subscriber grows without
 * bound and measures mosquitto's queue handling instead of the clients. */
#define E2E_WINDOW 8192
static atomic_long e2e_sent, e2e_received;

/* Waiting threads sleep on this and are woken by progress(), never spin: a spinning load
 * generator would steal the broker's CPU on a 2-core machine. */
static pthread_mutex_t progress_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t progress_cv = PTHREAD_COND_INITIALIZER;

static void progress(void)
{
    pthread_mutex_lock(&progress_mu);
    pthread_cond_broadcast(&progress_cv);
    pthread_mutex_unlock(&progress_mu);
}

/* Sleep until cond(arg) holds (re-checked at least every 10 ms); false after 30 s without
 * it, so a lost message can never hang the benchmark. */
static bool await(bool (*cond)(void *), void *arg)
{
    double give_up = now_s() + 30;
    bool ok;
    pthread_mutex_lock(&progress_mu);
    while (!(ok = cond(arg)) && now_s() < give_up) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 10000000;
        if (ts.tv_nsec >= 1000000000) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000;
        }
        pthread_cond_timedwait(&progress_cv, &progress_mu, &ts);
    }
    pthread_mutex_unlock(&progress_mu);
    return ok;
}

static bool e2e_room(void *more)
{
    return atomic_load(&e2e_sent) + *(long *)more - atomic_load(&e2e_received) <= E2E_WINDOW;
}

static void e2e_wait(long more)
{
    await(e2e_room, &more);
    atomic_fetch_add(&e2e_sent, more);
}

#define PUB_WINDOW 2048 /* unconfirmed publishes per publisher, daemon and direct alike */

static void *daemon_publisher(void *arg)
{
    Job *j = arg;
    Conn c;
    conn_open(&c);
    enum { WINDOW = PUB_WINDOW, BATCH = 256 };
    char *out = malloc(BATCH * 200);
    long sent = 0, replies = 0, msgs = 0;
    while (replies < j->count) {
        if (sent < j->count && sent - replies <= WINDOW - BATCH) {
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

static void on_message(struct mosquitto *m, void *ud, const struct mosquitto_message *msg)
{
    (void)m;
    (void)msg;
    atomic_fetch_add((atomic_long *)ud, 1);
    atomic_fetch_add(&e2e_received, 1);
    progress();
}

static void on_publish(struct mosquitto *m, void *ud, int mid)
{
    (void)m;
    (void)mid;
    atomic_fetch_add((atomic_long *)ud, 1);
    progress();
}

typedef struct Until {
    atomic_long *counter;
    long target;
} Until;

static bool reached(void *arg)
{
    Until *u = arg;
    return atomic_load(u->counter) >= u->target;
}

static struct mosquitto *direct_client(void *ud)
{
    struct mosquitto *m = mosquitto_new(NULL, true, ud);
    mosquitto_int_option(m, MOSQ_OPT_TCP_NODELAY, 1);
    if (mosquitto_connect(m, "127.0.0.1", opt.port, 60) != MOSQ_ERR_SUCCESS) {
        fprintf(stderr, "mqttbridge-bench: libmosquitto cannot connect\n");
        exit(2);
    }
    return m;
}

static atomic_int subacked;

static void on_subscribe(struct mosquitto *m, void *ud, int mid, int n, const int *granted)
{
    (void)m;
    (void)ud;
    (void)mid;
    (void)n;
    (void)granted;
    atomic_store(&subacked, 1);
}

/* Subscribe and wait for the SUBACK (before the loop thread runs): what is published after
 * this returns is delivered. */
static void direct_subscribe(struct mosquitto *m, const char *filter, int qos)
{
    atomic_store(&subacked, 0);
    mosquitto_subscribe_callback_set(m, on_subscribe);
    mosquitto_subscribe(m, NULL, filter, qos);
    double give_up = now_s() + 10;
    while (!atomic_load(&subacked) && now_s() < give_up) {
        mosquitto_loop(m, 100, 1);
    }
    if (!atomic_load(&subacked)) {
        fprintf(stderr, "mqttbridge-bench: no SUBACK for the direct subscriber\n");
        exit(2);
    }
}

static void *direct_publisher(void *arg)
{
    Job *j = arg;
    atomic_long done = 0;
    struct mosquitto *m = direct_client(&done);
    mosquitto_publish_callback_set(m, on_publish);
    mosquitto_loop_start(m);
    for (long i = 0; i < j->count; i++) {
        /* The same window of unconfirmed messages as the daemon's publishers get (libmosquitto
         * slows down badly with very long internal queues). */
        Until window = {&done, i - PUB_WINDOW + 1};
        await(reached, &window);
        e2e_wait(1);
        mosquitto_publish(m, NULL, j->topic, 64, PAYLOAD, j->qos, false);
    }
    Until all = {&done, j->count};
    await(reached, &all); /* libmosquitto's own thread completes them */
    mosquitto_disconnect(m);
    mosquitto_loop_stop(m, false);
    mosquitto_destroy(m);
    return NULL;
}

/* Messages per second a subscriber receives with n_pub publishers of count/n_pub each. */
static double throughput(bool via_daemon, int qos, int n_pub, long count)
{
    atomic_long received = 0;
    char topic[8][32];
    struct mosquitto *sub = NULL;
    Conn c;
    long msgs = 0, replies = 0;
    char line[200];
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
    double t0 = now_s();
    for (int i = 0; i < n_pub; i++) {
        snprintf(topic[i], sizeof(topic[i]), "tp/%d", i);
        jobs[i] = (Job){.qos = qos, .count = count / n_pub, .topic = topic[i]};
        pthread_create(&t[i], NULL, via_daemon ? daemon_publisher : direct_publisher, &jobs[i]);
    }
    long want = count / n_pub * n_pub;
    if (via_daemon) {
        while (msgs < want) {
            struct pollfd p = {.fd = c.fd, .events = POLLIN};
            if (poll(&p, 1, 30000) <= 0) {
                break;
            }
            conn_read(&c, &replies, &msgs, NULL);
            atomic_store(&e2e_received, msgs);
            progress();
        }
    } else {
        Until all = {&received, want};
        await(reached, &all);
        msgs = atomic_load(&received);
    }
    double elapsed = now_s() - t0;
    for (int i = 0; i < n_pub; i++) {
        pthread_join(t[i], NULL);
    }
    if (via_daemon) {
        close(c.fd);
    } else {
        mosquitto_disconnect(sub);
        mosquitto_loop_stop(sub, false);
        mosquitto_destroy(sub);
    }
    if (msgs < want) {
        fprintf(stderr, "mqttbridge-bench: %s QoS %d: only %ld of %ld messages arrived\n",
                via_daemon ? "daemon" : "direct", qos, msgs, want);
        /* Through the daemon that is a failure. The direct peer is only the baseline: a
         * shortfall of its own (libmosquitto now and then loses a few QoS 2 messages to its
         * own subscriber here) is reported, and its rate is what did arrive. */
        if (via_daemon) {
            exit(1);
        }
    }
    return (double)msgs / elapsed;
}

/* ---- latency ---- */

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static atomic_int echo;

static void on_echo(struct mosquitto *m, void *ud, const struct mosquitto_message *msg)
{
    (void)m;
    (void)ud;
    (void)msg;
    atomic_store(&echo, 1);
}

/* Round trips in microseconds, sorted. */
static double *latency(bool via_daemon, int qos, long n)
{
    double *rtt = malloc((size_t)n * sizeof(*rtt));
    char line[300];
    if (via_daemon) {
        Conn c;
        conn_open(&c);
        snprintf(line, sizeof(line),
                 "{\"id\":0,\"op\":\"subscribe\",\"filter\":\"lat\",\"qos\":%d}\n", qos);
        request(&c, line);
        snprintf(line, sizeof(line),
                 "{\"op\":\"publish\",\"topic\":\"lat\",\"payload\":\"%s\",\"qos\":%d,"
                 "\"wait\":false}\n",
                 PAYLOAD, qos);
        long replies = 0, msgs = 0;
        for (long i = 0; i < n; i++) {
            double t0 = now_s();
            send_all(c.fd, line, strlen(line));
            long want = msgs + 1;
            while (msgs < want) {
                conn_read(&c, &replies, &msgs, NULL);
            }
            rtt[i] = (now_s() - t0) * 1e6;
        }
        close(c.fd);
    } else {
        struct mosquitto *m = direct_client(NULL);
        mosquitto_message_callback_set(m, on_echo);
        direct_subscribe(m, "lat", qos);
        for (long i = 0; i < n; i++) {
            atomic_store(&echo, 0);
            double t0 = now_s();
            mosquitto_publish(m, NULL, "lat", 64, PAYLOAD, qos, false);
            while (!atomic_load(&echo)) {
                mosquitto_loop(m, 1000, 1);
            }
            rtt[i] = (now_s() - t0) * 1e6;
        }
        mosquitto_disconnect(m);
        mosquitto_destroy(m);
    }
    qsort(rtt, (size_t)n, sizeof(*rtt), cmp_double);
    return rtt;
}

static double pct(const double *sorted, long n, double p)
{
    long i = (long)(p * (double)(n - 1) + 0.5);
    return sorted[i];
}

/* ---- fan-out and memory ---- */

typedef struct Fleet {
    Conn *c;
    int n;
} Fleet;

/* n clients, each with `subs` subscriptions: "fan/+/v" (matching) and subs-1 idle ones. */
static void fleet_open(Fleet *f, int n, int subs)
{
    f->n = n;
    f->c = calloc((size_t)n, sizeof(*f->c));
    char *buf = malloc((size_t)(subs ? subs : 1) * 120 + 1);
    for (int i = 0; i < n; i++) {
        conn_open(&f->c[i]);
        size_t o = 0;
        for (int k = 0; k < subs; k++) {
            if (k == 0) {
                o += (size_t)sprintf(buf + o,
                                     "{\"id\":%d,\"op\":\"subscribe\",\"filter\":"
                                     "\"fan/+/v\"}\n",
                                     k);
            } else {
                o += (size_t)sprintf(buf + o,
                                     "{\"id\":%d,\"op\":\"subscribe\",\"filter\":"
                                     "\"idle/%d/%d\"}\n",
                                     k, i, k);
            }
        }
        if (subs == 0) {
            o = (size_t)sprintf(buf, "{\"id\":0,\"op\":\"ping\"}\n");
        }
        send_all(f->c[i].fd, buf, o);
        long replies = 0, msgs = 0, want = subs ? subs : 1;
        while (replies < want) {
            conn_read(&f->c[i], &replies, &msgs, NULL);
        }
    }
    free(buf);
}

static void fleet_close(Fleet *f)
{
    for (int i = 0; i < f->n; i++) {
        close(f->c[i].fd);
    }
    free(f->c);
}

/* Daemon CPU microseconds per delivered message. */
static double fanout(int clients, int subs, long messages)
{
    Fleet f;
    fleet_open(&f, clients, subs);
    Conn pub;
    conn_open(&pub);
    struct pollfd *p = calloc((size_t)clients, sizeof(*p));
    double cpu0 = daemon_cpu_s();
    long want = messages * clients, got = 0, dummy = 0;
    char line[300];
    for (long i = 0; i < messages; i++) {
        snprintf(line, sizeof(line),
                 "{\"op\":\"publish\",\"topic\":\"fan/%ld/v\","
                 "\"payload\":\"%s\",\"wait\":false}\n",
                 i % 100, PAYLOAD);
        send_all(pub.fd, line, strlen(line));
    }
    while (got < want) {
        for (int i = 0; i < clients; i++) {
            p[i] = (struct pollfd){.fd = f.c[i].fd, .events = POLLIN};
        }
        if (poll(p, (nfds_t)clients, 30000) <= 0) {
            fprintf(stderr, "mqttbridge-bench: fan-out stalled at %ld of %ld\n", got, want);
            exit(1);
        }
        for (int i = 0; i < clients; i++) {
            if (p[i].revents) {
                conn_read(&f.c[i], &dummy, &got, NULL);
            }
        }
    }
    double cpu = daemon_cpu_s() - cpu0;
    free(p);
    close(pub.fd);
    fleet_close(&f);
    return cpu * 1e6 / (double)want;
}

typedef struct Memory {
    long idle_kib;
    double per_client_kib, per_sub_kib;
} Memory;

static Memory memory(int clients, int subs)
{
    /* A fresh daemon, so earlier workloads' buffers do not count. */
    stop(&opt.daemon_pid);
    start_daemon();
    Memory m = {.idle_kib = daemon_rss_kib()};
    Fleet f;
    fleet_open(&f, clients, 0);
    long with_clients = daemon_rss_kib();
    m.per_client_kib = (double)(with_clients - m.idle_kib) / clients;
    fleet_close(&f);
    stop(&opt.daemon_pid);
    start_daemon();
    long base = daemon_rss_kib();
    fleet_open(&f, clients, subs);
    m.per_sub_kib = (double)(daemon_rss_kib() - base) / ((double)clients * subs);
    fleet_close(&f);
    return m;
}

/* ---- pub -l ---- */

static double run_timed(char *const argv[], const char *input)
{
    char log[400];
    snprintf(log, sizeof(log), "%s/pub.log", opt.dir);
    double t0 = now_s();
    pid_t pid = spawn(argv, log, input);
    int status;
    waitpid(pid, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status)) {
        fprintf(stderr, "mqttbridge-bench: %s failed (see %s)\n", argv[0], log);
        exit(1);
    }
    return now_s() - t0;
}

/* Lines per second: mqttctl pub -l, and mosquitto_pub -l; both at QoS 0 to one subscriber. */
static void pub_lines(long n, double *ret_ctl, double *ret_mosq)
{
    char input[400], port[16];
    snprintf(input, sizeof(input), "%s/lines.txt", opt.dir);
    FILE *f = fopen(input, "w");
    for (long i = 0; i < n; i++) {
        fprintf(f, "line %ld %s\n", i, PAYLOAD);
    }
    fclose(f);
    snprintf(port, sizeof(port), "%d", opt.port);
    for (int pass = 0; pass < 2; pass++) {
        atomic_long got = 0;
        struct mosquitto *sub = direct_client(&got);
        mosquitto_message_callback_set(sub, on_message);
        direct_subscribe(sub, "lines", 0);
        mosquitto_loop_start(sub);
        char *ctl[] = {(char *)opt.mqttctl, "-s", opt.sock, "pub", "-t", "lines", "-l", NULL};
        char *mosq[] = {"mosquitto_pub", "-h", "127.0.0.1", "-p", port, "-t", "lines", "-l", NULL};
        /* The sender's time from start to exit; then check that everything arrived. */
        double t = run_timed(pass == 0 ? ctl : mosq, input);
        double give_up = now_s() + 30;
        while (atomic_load(&got) < n && now_s() < give_up) {
            usleep(1000);
        }
        long arrived = atomic_load(&got);
        mosquitto_disconnect(sub);
        mosquitto_loop_stop(sub, false);
        mosquitto_destroy(sub);
        if (pass == 0 && arrived < n) {
            fprintf(stderr, "mqttbridge-bench: mqttctl pub -l: %ld of %ld lines arrived\n", arrived,
                    n);
            exit(1);
        }
        *(pass == 0 ? ret_ctl : ret_mosq) = (double)n / t;
    }
}

/* ---- soak ---- */

static int soak(long total)
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
            long rss = daemon_rss_kib();
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

/* ---- main ---- */

#define MAX_RUNS 15

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof(*v), cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
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
    fprintf(f, "Usage: mqttbridge-bench [--quick] [--json] [--runs N] [--soak MESSAGES]\n"
               "                        [--daemon PATH] [--mqttctl PATH] [--protocol 5|3.1.1]\n"
               "Runs each workload through mqttbridged and directly with libmosquitto against\n"
               "the same loopback mosquitto (started here), and reports both and their ratio.\n");
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"quick", no_argument, NULL, 'q'},
        {"json", no_argument, NULL, 'j'},
        {"runs", required_argument, NULL, 'r'},
        {"soak", required_argument, NULL, 's'},
        {"daemon", required_argument, NULL, 'd'},
        {"mqttctl", required_argument, NULL, 'm'},
        {"protocol", required_argument, NULL, 'p'},
        {"help", no_argument, NULL, 'h'},
        {0},
    };
    opt.daemon = getenv("MQTTBRIDGED") ? getenv("MQTTBRIDGED") : "build/daemon/mqttbridged";
    opt.mqttctl = getenv("MQTTCTL") ? getenv("MQTTCTL") : "build/clients/mqttctl";
    int o;
    while ((o = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
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
            opt.daemon = optarg;
            break;
        case 'm':
            opt.mqttctl = optarg;
            break;
        case 'p':
            opt.protocol = optarg;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (opt.quick) {
        opt.runs = 1;
    }
    if (opt.runs < 1 || opt.runs > MAX_RUNS) {
        fprintf(stderr, "mqttbridge-bench: --runs must be 1..%d\n", MAX_RUNS);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    mosquitto_lib_init();
    snprintf(opt.dir, sizeof(opt.dir), "/tmp/mqttbridge-bench.XXXXXX");
    if (!mkdtemp(opt.dir)) {
        die("mkdtemp");
    }
    chmod(opt.dir, 0755);
    snprintf(opt.sock, sizeof(opt.sock), "%s/mqttbridge.sock", opt.dir);
    atexit(cleanup);
    start_all();
    if (opt.soak) {
        return soak(opt.soak);
    }

    long tp_count = opt.quick ? 2000 : 200000, lat_n = opt.quick ? 200 : 20000;
    long fan_msgs = opt.quick ? 50 : 2000, lines = opt.quick ? 2000 : 200000;
    int fan_big = opt.quick ? 100 : 1000;
    struct {
        int qos, pubs;
        double daemon[MAX_RUNS], direct[MAX_RUNS], ratio[MAX_RUNS];
    } tp[6] = {{.qos = 0, .pubs = 1}, {.qos = 0, .pubs = 8}, {.qos = 1, .pubs = 1},
               {.qos = 1, .pubs = 8}, {.qos = 2, .pubs = 1}, {.qos = 2, .pubs = 8}};
    struct {
        int qos;
        double d50[MAX_RUNS], d99[MAX_RUNS], d999[MAX_RUNS], m50[MAX_RUNS], m99[MAX_RUNS],
            m999[MAX_RUNS];
    } lat[2] = {{.qos = 0}, {.qos = 1}};
    double fan_small[MAX_RUNS], fan_large[MAX_RUNS], ctl[MAX_RUNS], mosq[MAX_RUNS],
        lines_ratio[MAX_RUNS];

    for (int run = 0; run < opt.runs; run++) {
        for (int i = 0; i < 6; i++) {
            /* Direct first, then through the daemon: the pair runs back to back. */
            tp[i].direct[run] = throughput(false, tp[i].qos, tp[i].pubs, tp_count);
            tp[i].daemon[run] = throughput(true, tp[i].qos, tp[i].pubs, tp_count);
            tp[i].ratio[run] = tp[i].daemon[run] / tp[i].direct[run];
        }
        for (int i = 0; i < 2; i++) {
            double *d = latency(true, lat[i].qos, lat_n), *m = latency(false, lat[i].qos, lat_n);
            lat[i].d50[run] = pct(d, lat_n, 0.5), lat[i].d99[run] = pct(d, lat_n, 0.99);
            lat[i].d999[run] = pct(d, lat_n, 0.999), lat[i].m50[run] = pct(m, lat_n, 0.5);
            lat[i].m99[run] = pct(m, lat_n, 0.99), lat[i].m999[run] = pct(m, lat_n, 0.999);
            free(d);
            free(m);
        }
        /* The same number of deliveries in both, so CPU time is measured as precisely. */
        fan_small[run] = fanout(fan_big / 10, 1, fan_msgs * 10);
        fan_large[run] = fanout(fan_big, 10, fan_msgs);
        pub_lines(lines, &ctl[run], &mosq[run]);
        lines_ratio[run] = ctl[run] / mosq[run];
    }
    Memory mem = memory(fan_big, 10);

    if (opt.json) {
        printf("{\"runs\":%d,\"quick\":%s,\"throughput\":[", opt.runs,
               opt.quick ? "true" : "false");
        for (int i = 0; i < 6; i++) {
            printf("%s{\"qos\":%d,\"publishers\":%d,\"daemon_msgs_per_s\":%.0f,"
                   "\"direct_msgs_per_s\":%.0f,\"ratio\":%.3f}",
                   i ? "," : "", tp[i].qos, tp[i].pubs, median(tp[i].daemon, opt.runs),
                   median(tp[i].direct, opt.runs), median(tp[i].ratio, opt.runs));
        }
        printf("],\"latency_us\":[");
        for (int i = 0; i < 2; i++) {
            printf("%s{\"qos\":%d,\"daemon\":{\"p50\":%.1f,\"p99\":%.1f,\"p99.9\":%.1f},"
                   "\"direct\":{\"p50\":%.1f,\"p99\":%.1f,\"p99.9\":%.1f}}",
                   i ? "," : "", lat[i].qos, median(lat[i].d50, opt.runs),
                   median(lat[i].d99, opt.runs), median(lat[i].d999, opt.runs),
                   median(lat[i].m50, opt.runs), median(lat[i].m99, opt.runs),
                   median(lat[i].m999, opt.runs));
        }
        printf("],\"fanout_cpu_us_per_delivery\":{\"subscriptions_%d\":%.3f,"
               "\"subscriptions_%d\":%.3f},",
               fan_big / 10, median(fan_small, opt.runs), fan_big * 10,
               median(fan_large, opt.runs));
        printf("\"memory_kib\":{\"idle\":%ld,\"per_client\":%.2f,\"per_subscription\":%.3f},",
               mem.idle_kib, mem.per_client_kib, mem.per_sub_kib);
        printf("\"pub_lines\":{\"lines\":%ld,\"mqttctl_per_s\":%.0f,\"mosquitto_pub_per_s\":%.0f,"
               "\"ratio\":%.3f}}\n",
               lines, median(ctl, opt.runs), median(mosq, opt.runs), median(lines_ratio, opt.runs));
        return 0;
    }
    printf("mqttbridge-bench: %d run(s), medians; ratio = through the daemon / direct\n\n",
           opt.runs);
    printf("throughput, 64-byte payloads  %12s %12s %7s\n", "daemon/s", "direct/s", "ratio");
    for (int i = 0; i < 6; i++) {
        printf("  QoS %d, %d publisher%s           %12.0f %12.0f %7.2f\n", tp[i].qos, tp[i].pubs,
               tp[i].pubs > 1 ? "s" : " ", median(tp[i].daemon, opt.runs),
               median(tp[i].direct, opt.runs), median(tp[i].ratio, opt.runs));
    }
    printf("\nlatency, one in flight (us)    %8s %8s %8s | %8s %8s %8s\n", "p50", "p99", "p99.9",
           "p50", "p99", "p99.9");
    for (int i = 0; i < 2; i++) {
        printf("  QoS %d daemon | direct       %8.1f %8.1f %8.1f | %8.1f %8.1f %8.1f\n", lat[i].qos,
               median(lat[i].d50, opt.runs), median(lat[i].d99, opt.runs),
               median(lat[i].d999, opt.runs), median(lat[i].m50, opt.runs),
               median(lat[i].m99, opt.runs), median(lat[i].m999, opt.runs));
    }
    printf("\nfan-out: daemon CPU per delivered message\n");
    printf("  %5d subscriptions (%4d clients)  %.3f us\n", fan_big / 10, fan_big / 10,
           median(fan_small, opt.runs));
    printf("  %5d subscriptions (%4d clients)  %.3f us\n", fan_big * 10, fan_big,
           median(fan_large, opt.runs));
    printf("\nmemory: idle %ld KiB, %.2f KiB per idle client, %.3f KiB per subscription\n",
           mem.idle_kib, mem.per_client_kib, mem.per_sub_kib);
    printf("\npub -l, %ld lines at QoS 0: mqttctl %.0f/s, mosquitto_pub %.0f/s, ratio %.2f\n",
           lines, median(ctl, opt.runs), median(mosq, opt.runs), median(lines_ratio, opt.runs));
    return 0;
}

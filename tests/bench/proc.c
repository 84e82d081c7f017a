/* SPDX-License-Identifier: MIT */
/* The processes mqttbridge-bench runs and measures: see bench.h. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"

extern char **environ;

Options opt = {.runs = 3};

const char PAYLOAD[] = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The first thread to give up runs the exit handlers (stopping the broker and the daemon);
 * one giving up after it waits here for the exit instead of running them a second time. */
static pthread_mutex_t giving_up = PTHREAD_MUTEX_INITIALIZER;

void die(const char *what)
{
    int e = errno;
    pthread_mutex_lock(&giving_up);
    fprintf(stderr, "mqttbridge-bench: %s: %s\n", what, strerror(e));
    exit(2);
}

void fail(const char *fmt, ...)
{
    pthread_mutex_lock(&giving_up);
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "mqttbridge-bench: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(1);
}

pid_t spawn(char *const argv[], const char *log, const char *in)
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

void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (!f || fputs(text, f) < 0 || fclose(f) != 0) {
        die(path);
    }
}

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 ||
        getsockname(fd, (struct sockaddr *)&a, &len) < 0) {
        die("free port");
    }
    close(fd);
    return ntohs(a.sin_port);
}

int unix_connect(const char *path)
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
    bool ok = fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0;
    if (fd >= 0) {
        close(fd);
    }
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
    return tcp_up(opt.port) && tcp_up(opt.tls_port);
}

/* Accepting on its socket, and connected to the broker. */
static bool daemon_ready(void)
{
    int fd = unix_connect(opt.sock);
    if (fd < 0) {
        return false;
    }
    const char *q = "{\"op\":\"status\"}\n";
    char buf[4096];
    ssize_t n = write(fd, q, strlen(q)) > 0 ? read(fd, buf, sizeof(buf) - 1) : -1;
    close(fd);
    if (n <= 0) {
        return false;
    }
    buf[n] = 0;
    return strstr(buf, "\"connected\":true") != NULL;
}

static void run_quietly(char *const argv[])
{
    char log[400];
    snprintf(log, sizeof(log), "%s/openssl.log", opt.dir);
    int status;
    pid_t pid = spawn(argv, log, NULL);
    if (waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status)) {
        fail("%s failed (see %s)", argv[0], log);
    }
}

const char *ca_file(void)
{
    return opt.ca;
}

void make_certs(void)
{
    char ca_key[400], key[400], csr[400], crt[400], ext[400];
    snprintf(ca_key, sizeof(ca_key), "%s/ca.key", opt.dir);
    snprintf(key, sizeof(key), "%s/server.key", opt.dir);
    snprintf(csr, sizeof(csr), "%s/server.csr", opt.dir);
    snprintf(crt, sizeof(crt), "%s/server.crt", opt.dir);
    snprintf(ext, sizeof(ext), "%s/ext.cnf", opt.dir);
    if (access(crt, F_OK) == 0) {
        return;
    }
    write_file(ext, "subjectAltName = IP:127.0.0.1, DNS:localhost\n");
    char *ca[] = {"openssl",
                  "req",
                  "-x509",
                  "-newkey",
                  "ec",
                  "-pkeyopt",
                  "ec_paramgen_curve:prime256v1",
                  "-nodes",
                  "-keyout",
                  ca_key,
                  "-out",
                  (char *)ca_file(),
                  "-days",
                  "2",
                  "-subj",
                  "/CN=bench CA",
                  NULL};
    char *req[] = {
        "openssl",       "req",     "-newkey", "ec",   "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes",        "-keyout", key,       "-out", csr,        "-subj",
        "/CN=localhost", NULL};
    char *sign[] = {"openssl",
                    "x509",
                    "-req",
                    "-in",
                    csr,
                    "-CA",
                    (char *)ca_file(),
                    "-CAkey",
                    ca_key,
                    "-CAcreateserial",
                    "-out",
                    crt,
                    "-days",
                    "2",
                    "-extfile",
                    ext,
                    NULL};
    run_quietly(ca);
    run_quietly(req);
    run_quietly(sign);
    if (chmod(key, 0644) < 0) { /* mosquitto reads it after dropping root */
        die(key);
    }
}

void start_broker(void)
{
    char conf[400], log[400], text[2048];
    opt.port = free_port();
    opt.tls_port = free_port();
    make_certs();
    snprintf(conf, sizeof(conf), "%s/mosquitto.conf", opt.dir);
    snprintf(log, sizeof(log), "%s/mosquitto.log", opt.dir);
    snprintf(text, sizeof(text),
             "allow_anonymous true\nset_tcp_nodelay true\nmax_queued_messages 0\n"
             "max_queued_bytes 0\nlog_dest none\nmax_connections -1\n"
             "listener %d 127.0.0.1\n"
             "listener %d 127.0.0.1\ncafile %s\ncertfile %s/server.crt\nkeyfile %s/server.key\n",
             opt.port, opt.tls_port, ca_file(), opt.dir, opt.dir);
    write_file(conf, text);
    char *argv[] = {"mosquitto", "-c", conf, NULL};
    opt.broker_pid = spawn(argv, log, NULL);
    wait_for(broker_ready, "mosquitto");
}

void start_daemon(void)
{
    char conf[400], log[400], text[2048], tls[1024] = "";
    snprintf(conf, sizeof(conf), "%s/mqttbridged.conf", opt.dir);
    snprintf(log, sizeof(log), "%s/mqttbridged.log", opt.dir);
    if (opt.tls) {
        snprintf(tls, sizeof(tls), "[tls]\nenabled = true\nca_file = %s\n", ca_file());
    }
    snprintf(text, sizeof(text),
             "[broker]\nhost = 127.0.0.1:%d\n%s%s%s[ipc]\nsocket = %s\nmax_clients = 20000\n"
             "client_buffer = 64M\n[queue]\nmax_messages = 4000000\nmax_bytes = 2G\n"
             "[log]\nlevel = warning\n%s",
             opt.tls ? opt.tls_port : opt.port, opt.protocol ? "protocol = " : "",
             opt.protocol ? opt.protocol : "", opt.protocol ? "\n" : "", opt.sock, tls);
    write_file(conf, text);
    char *argv[] = {opt.daemon, "-c", conf, NULL};
    opt.daemon_pid = spawn(argv, log, NULL);
    wait_for(daemon_ready, "mqttbridged");
}

void stop(pid_t *pid)
{
    if (*pid > 0) {
        kill(*pid, SIGTERM);
        waitpid(*pid, NULL, 0);
        *pid = 0;
    }
}

/* The scale case opens 10 000 connections from here. */
void raise_nofile(void)
{
    struct rlimit r;
    if (getrlimit(RLIMIT_NOFILE, &r) == 0 && r.rlim_cur < r.rlim_max) {
        r.rlim_cur = r.rlim_max;
        (void)setrlimit(RLIMIT_NOFILE, &r); /* as far as it goes: the case says when short */
    }
}

double daemon_cpu_s(void)
{
    return pid_cpu_s(opt.daemon_pid);
}

double pid_cpu_s(pid_t pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f || !fgets(buf, sizeof(buf), f)) {
        die(path);
    }
    fclose(f);
    unsigned long ut = 0, st = 0;
    char *p = strrchr(buf, ')');
    if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2) {
        fail("cannot read %s", path);
    }
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

double settle(void)
{
    double t0 = now_s();
    for (;;) {
        double d0 = daemon_cpu_s(), b0 = pid_cpu_s(opt.broker_pid), w0 = now_s();
        usleep(100000);
        double dt = now_s() - w0;
        bool quiet =
            (daemon_cpu_s() - d0) / dt < 0.05 && (pid_cpu_s(opt.broker_pid) - b0) / dt < 0.05;
        if (quiet || now_s() - t0 > 10) {
            return now_s() - t0;
        }
    }
}

bool schedstat(const char *path, unsigned long long *wait_ns, unsigned long long *slices)
{
    FILE *f = fopen(path, "r");
    bool ok = f && fscanf(f, "%*u %llu %llu", wait_ns, slices) == 2;
    if (f) {
        fclose(f);
    }
    if (!ok) {
        *wait_ns = *slices = 0;
    }
    return ok;
}

static bool pid_sched(pid_t pid, unsigned long long *wait_ns, unsigned long long *slices)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/schedstat", (int)pid);
    return schedstat(path, wait_ns, slices);
}

Sched daemon_sched(void)
{
    char path[64], line[256];
    Sched r = {0};
    /* no CONFIG_SCHED_INFO: the rows are left out */
    r.ok = pid_sched(opt.daemon_pid, &r.wait_ns, &r.slices);
    snprintf(path, sizeof(path), "/proc/%d/status", (int)opt.daemon_pid);
    FILE *f = fopen(path, "r");
    if (!f) {
        die(path);
    }
    while (fgets(line, sizeof(line), f)) {
        (void)sscanf(line, "nonvoluntary_ctxt_switches: %llu", &r.preempted);
    }
    fclose(f);
    return r;
}

Probe probe_start(void)
{
    Probe p = {0};
    if (opt.trace) {
        p.self = self_cpu_s();
        p.daemon = daemon_cpu_s();
        p.broker = pid_cpu_s(opt.broker_pid);
        p.sched_ok = pid_sched(opt.daemon_pid, &p.daemon_wait, &p.daemon_slices) &&
                     pid_sched(opt.broker_pid, &p.broker_wait, &p.broker_slices);
    }
    return p;
}

void probe_print(const Probe *p, const char *what, long messages, double seconds)
{
    if (!opt.trace || seconds <= 0) {
        return;
    }
    Probe q = probe_start();
    double s = seconds;
    fprintf(stderr,
            "trace: %s: %.0f msg/s over %.2f s | CPU: bench %.0f%%, daemon %.0f%%, broker %.0f%%",
            what, (double)messages / s, s, (q.self - p->self) * 100 / s,
            (q.daemon - p->daemon) * 100 / s, (q.broker - p->broker) * 100 / s);
    if (p->sched_ok && q.sched_ok) {
        fprintf(stderr,
                " | waiting for a CPU: daemon %.1f%%, broker %.1f%% | CPU turns/s: daemon %.0f, "
                "broker %.0f",
                (double)(q.daemon_wait - p->daemon_wait) / 1e7 / s,
                (double)(q.broker_wait - p->broker_wait) / 1e7 / s,
                (double)(q.daemon_slices - p->daemon_slices) / s,
                (double)(q.broker_slices - p->broker_slices) / s);
    }
    fputc('\n', stderr);
}

double self_cpu_s(void)
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) < 0) {
        die("getrusage");
    }
    return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
           (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

Mem daemon_mem(void)
{
    char path[64], line[256];
    snprintf(path, sizeof(path), "/proc/%d/smaps_rollup", (int)opt.daemon_pid);
    FILE *f = fopen(path, "r");
    Mem m = {-1, -1};
    while (f && fgets(line, sizeof(line), f)) {
        long v;
        if (sscanf(line, "Rss: %ld", &v) == 1) {
            m.rss = v;
        } else if (sscanf(line, "Pss_Anon: %ld", &v) == 1) {
            m.pss_anon = v;
        }
    }
    if (!f || m.rss < 0 || m.pss_anon < 0) {
        fail("cannot read Rss and Pss_Anon from %s", path);
    }
    fclose(f);
    return m;
}

/* ---- the raw daemon client ---- */

void conn_open(Conn *c)
{
    c->fd = unix_connect(opt.sock);
    c->in_len = 0;
    if (c->fd < 0) {
        die(opt.sock);
    }
}

void send_all(int fd, const char *p, size_t n)
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

void conn_read(Conn *c, long *replies, long *messages, long *failures)
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

void request(Conn *c, const char *line)
{
    send_all(c->fd, line, strlen(line));
    long replies = 0, msgs = 0;
    while (replies == 0) {
        conn_read(c, &replies, &msgs, NULL);
    }
}

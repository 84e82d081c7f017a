/* SPDX-License-Identifier: MIT */
/*
 * mqttbridge-bench's parts: the processes it runs (proc.c), the workloads (cases.c, local.c)
 * and the table of results (report.c). bench.c holds the options and runs the cases.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <sys/types.h>

#define MAX_RUNS 15

/* ---- options and the processes (proc.c) ---- */

typedef struct Options {
    bool quick, json, trace;
    int runs;
    long soak;
    const char *only;     /* comma-separated case names; NULL: all */
    const char *protocol; /* [broker] protocol for the daemon, NULL: its default */
    char daemon[4096], mqttctl[4096];
    char dir[256];      /* scratch, removed at exit */
    char sock[300];     /* the daemon's socket */
    char ca[300];       /* the throw-away CA's certificate, named once before any thread */
    int port, tls_port; /* mosquitto's plain and TLS listeners */
    pid_t broker_pid, daemon_pid;
    bool tls; /* the daemon (and direct clients) use the TLS listener */
} Options;

extern Options opt;

double now_s(void);
void die(const char *what) __attribute__((noreturn));
void fail(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
pid_t spawn(char *const argv[], const char *log, const char *in);
void write_file(const char *path, const char *text);
void start_broker(void);
void start_daemon(void);
void stop(pid_t *pid);
void raise_nofile(void);
/* The TLS files (a throw-away CA and a server certificate) under opt.dir, made once. */
void make_certs(void);
const char *ca_file(void);

/* CPU seconds: a process's, the daemon's, and this process's (all its threads). */
double pid_cpu_s(pid_t pid);
double daemon_cpu_s(void);
double self_cpu_s(void);
/* Waits, at most 10 s, until the daemon and the broker each use under 5 % of a CPU over 100
 * ms: what a case left behind (the daemon unsubscribing thousands of filters after the fan-out
 * or memory case) must not share the next case's CPUs. Returns the seconds waited. */
double settle(void);
/* The daemon's scheduling so far: nanoseconds it was runnable but waited for a CPU and the
 * times it got one (/proc/PID/schedstat), the times it was taken off one while it still had
 * work (nonvoluntary_ctxt_switches). */
typedef struct Sched {
    bool ok; /* schedstat could be read */
    unsigned long long wait_ns, slices, preempted;
} Sched;
Sched daemon_sched(void);
/* A schedstat file (/proc/PID/schedstat, /proc/thread-self/schedstat): nanoseconds runnable
 * but off CPU and the times a CPU was given; false, and both 0, where the kernel does not say
 * (no CONFIG_SCHED_INFO). */
bool schedstat(const char *path, unsigned long long *wait_ns, unsigned long long *slices);
/* --trace: one pass of a case as a line on stderr: its message rate, and from probe_start()
 * on, per second of the pass, the CPU of this process, the daemon and the broker, and for the
 * daemon's and the broker's main threads the time runnable but waiting for a CPU and the
 * times they got one (left out where schedstat cannot be read). Nothing is read without
 * --trace. */
typedef struct Probe {
    double self, daemon, broker;
    unsigned long long daemon_wait, daemon_slices, broker_wait, broker_slices;
    bool sched_ok;
} Probe;
Probe probe_start(void);
void probe_print(const Probe *p, const char *what, long messages, double seconds);
/* From /proc/PID/smaps_rollup, KiB. */
typedef struct Mem {
    long rss, pss_anon;
} Mem;
Mem daemon_mem(void);

/* ---- a raw daemon client: writes request lines, counts reply and message lines ---- */

typedef struct Conn {
    int fd;
    char in[1 << 16];
    size_t in_len;
} Conn;

int unix_connect(const char *path);
void conn_open(Conn *c);
void send_all(int fd, const char *p, size_t n);
void conn_read(Conn *c, long *replies, long *messages, long *failures);
void request(Conn *c, const char *line);

extern const char PAYLOAD[]; /* 64 bytes */

/* ---- direct libmosquitto clients (cases.c), on the TLS listener when opt.tls ---- */

struct mosquitto;
struct mosquitto *direct_client(void *ud);
/* Subscribe, and wait for the SUBACK before the loop thread runs. */
void direct_subscribe(struct mosquitto *m, const char *filter, int qos);
void direct_close(struct mosquitto *m, bool threaded);

/* A process copying bytes between a Unix socket at `path` and the broker's `port` (relay.c):
 * the latency case's floor. Stopped with stop(). */
pid_t relay_start(const char *path, int port);

/* ---- the results (report.c) ---- */

/* One line of the table: a figure through the daemon ("ours") and the same done directly
 * with libmosquitto or mosquitto's tools ("peer", NAN when there is none), per run; with CPU
 * microseconds per message of everything on that side of the broker when measured. */
typedef struct Row {
    char name[96];
    const char *unit;
    bool lower_is_better;
    double ours[MAX_RUNS], peer[MAX_RUNS], cpu_ours[MAX_RUNS], cpu_peer[MAX_RUNS];
    long lost_ours, lost_peer; /* messages that did not arrive, over all runs */
} Row;

Row *row(const char *unit, bool lower_is_better, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void row_set(Row *r, int run, double ours, double peer);
void row_cpu(Row *r, int run, double ours, double peer);
void report_text(FILE *f);
void report_json(FILE *f);
/* Messages that did not arrive through the daemon, over all rows. */
long report_lost_ours(void);

/* ---- the workloads (cases.c, local.c); `run` is the run's index ---- */

void case_throughput(int run);
void case_latency(int run);
void case_fanout(int run);
void case_pub_lines(int run);
void case_fairness(int run);
void case_scale(int run);
void case_memory(int run);
void case_tls(int run);
int soak(long total);

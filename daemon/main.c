/* SPDX-License-Identifier: MIT */
/*
 * mqttbridged: one MQTT session shared by local processes over a Unix socket.
 * Start-up, the spool's recovery, signals and shutdown (configuration: reload.c).
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include "answer.h"
#include "bridge.h"
#include "daemon.h"
#include "defaults.h"
#include "log.h"
#include "notify.h"
#include "ops.h"
#include "reload.h"
#include "rpc.h"
#include "metrics.h"
#include "sessions.h"
#include "subs.h"
#include "tls.h"
#include "waiters.h"

#define STOP_GRACE 2.0 /* seconds for in-flight QoS 1/2 acknowledgements at stop */

static void usage(FILE *f)
{
    fprintf(f, "Usage: mqttbridged [OPTION]...\n"
               "Keep one MQTT session with a broker and share it with local processes through a\n"
               "Unix socket speaking newline-delimited JSON.\n"
               "\n"
               "  -c, --config FILE     configuration file (default " DEFAULT_CONFIG_FILE ")\n"
               "  -f, --foreground      accepted for compatibility: mqttbridged never forks\n"
               "  -s, --socket PATH     listen on PATH (overrides ipc.socket)\n"
               "  -b, --broker HOST[:PORT][,...]  broker address(es) (overrides broker.host)\n"
               "  -v                    more verbose logging (repeat for packet dumps)\n"
               "      --check-config    validate the configuration and exit\n"
               "      --version         print the version and exit\n"
               "  -h, --help            show this help\n"
               "\n"
               "Signals: SIGHUP reloads the configuration, SIGTERM/SIGINT stop gracefully.\n"
               "See mqttbridged(8) and mqttbridged.conf(5).\n");
}

typedef struct Recovery {
    Daemon *d;
    Buf done; /* uint64_t seqs of superseded messages, forgotten once the spool is open */
} Recovery;

/* A message the spool still held from an earlier run: queued again, in order; one that had
 * been sent resumes in flight under its packet id (DUP, or PUBREL past PUBREC). */
static void on_recovered(void *ud, const SpoolMessage *m)
{
    Recovery *rc = ud;
    if (m->session) { /* kept for a named local session */
        if (!sessions_recovered_message(rc->d, m) &&
            buf_append(&rc->done, &m->seq, sizeof(m->seq)) < 0) {
            log_error("spool: out of memory: message %llu is dropped again at the next start",
                      (unsigned long long)m->seq);
        }
        return;
    }
    if (m->superseded) {
        log_warning("spool: message %llu was acknowledged (a newer one has its packet id %u); "
                    "forgetting it",
                    (unsigned long long)m->seq, (unsigned)m->packet_id);
        if (buf_append(&rc->done, &m->seq, sizeof(m->seq)) == 0) {
            return;
        } /* out of memory: sent again instead, at least once */
    }
    SessionPublish p = {.topic = m->topic,
                        .payload = m->payload,
                        .qos = m->qos,
                        .retain = m->retain,
                        .spool_id = m->seq,
                        .packet_id = m->superseded ? 0 : m->packet_id,
                        .pubrec = m->pubrec && !m->superseded,
                        .props = m->props};
    /* The expiry is kept as Unix time; the session's clock is monotonic. One that has passed
     * makes session_publish refuse the message (-ETIME, counted) unless it was on the wire. */
    int64_t now = now_ms(), left = m->expires_at ? m->expires_at - wall_ms() : 0;
    p.expires_at = m->expires_at ? (left > 0 ? now + left : now) : 0;
    int r = session_publish(rc->d->broker.session, &p, NULL, now, NULL);
    if (r == -ETIME || r == -EINVAL) {
        if (r == -ETIME) {
            log_info("spool: message %llu to %.*s expired while the daemon was down; dropped",
                     (unsigned long long)m->seq, (int)m->topic.n, (const char *)m->topic.p);
        } else {
            log_error("spool: message %llu is not a valid message (a damaged record?); dropped",
                      (unsigned long long)m->seq);
        }
        if (buf_append(&rc->done, &m->seq, sizeof(m->seq)) < 0) {
            log_error("spool: out of memory: message %llu is dropped again at the next start",
                      (unsigned long long)m->seq);
        }
    } else if (r < 0) {
        log_error("spool: message %llu to %.*s could not be queued again (%s); it stays in the "
                  "spool for the next start",
                  (unsigned long long)m->seq, (int)m->topic.n, (const char *)m->topic.p,
                  strerror(-r));
    }
}

static void on_recovered_session(void *ud, const SpoolSession *m)
{
    sessions_recovered(((Recovery *)ud)->d, m);
}

/* Open [queue] spool_dir and queue what it holds, ahead of anything new; sessions come back
 * with what they kept. */
static int open_spool(Daemon *d)
{
    Recovery rc = {.d = d};
    SpoolRecovery cb = {on_recovered, on_recovered_session, &rc};
    int r = spool_open(d->loop, d->cfg.queue.spool_dir, d->cfg.queue.fsync, &cb, &d->spool);
    if (r < 0) {
        buf_free(&rc.done);
        return r;
    }
    for (size_t off = 0; off + sizeof(uint64_t) <= rc.done.len; off += sizeof(uint64_t)) {
        uint64_t seq;
        memcpy(&seq, rc.done.data + off, sizeof(seq));
        spool_done(d->spool, seq);
    }
    buf_free(&rc.done);
    sessions_recovery_done(d);
    Session *s = d->broker.session;
    session_restore_incoming(s, spool_incoming_held(d->spool));
    if (s->queued + s->inflight) {
        log_info("spool %s: %zu unacknowledged messages recovered (%zu resuming in flight); "
                 "they go out first",
                 d->cfg.queue.spool_dir, s->queued + s->inflight, s->inflight);
    }
    return 0;
}

static void on_grace(struct ev_loop *loop, ev_timer *w, int revents)
{
    Daemon *d = container_of(w, Daemon, grace);
    (void)revents;
    log_warning("stopping with %zu messages still unacknowledged", d->broker.session->inflight);
    ev_break(loop, EVBREAK_ALL);
}

/* While stopping: done once nothing is in flight (checked before the loop sleeps). */
static void on_stop_when(struct ev_loop *loop, ev_prepare *w, int revents)
{
    Daemon *d = container_of(w, Daemon, stop_when);
    Session *s = d->broker.session;
    (void)revents;
    if (s->inflight == 0 || s->state != SESSION_CONNECTED) {
        ev_break(loop, EVBREAK_ALL);
    }
}

static void on_signal(struct ev_loop *loop, ev_signal *w, int revents)
{
    Daemon *d = w->data;
    (void)revents;
    if (w->signum == SIGHUP) {
        char err[512];
        daemon_reload(d, err, sizeof(err));
        return;
    }
    if (d->stopping) {
        return; /* already on its way */
    }
    notify_stopping();
    d->stopping = true;
    server_refuse_new(&d->server);
    Session *s = d->broker.session;
    if (s->state == SESSION_CONNECTED && s->inflight) {
        /* A short grace for the broker to acknowledge what is in flight. */
        log_info("%s: stopping after %zu in-flight messages are acknowledged (at most %.1f s)",
                 strsignal(w->signum), s->inflight, STOP_GRACE);
        ev_timer_init(&d->grace, on_grace, STOP_GRACE, 0.0);
        ev_timer_start(loop, &d->grace);
        ev_prepare_init(&d->stop_when, on_stop_when);
        ev_set_priority(&d->stop_when, EV_MINPRI); /* after the broker's flush */
        ev_prepare_start(loop, &d->stop_when);
    } else {
        log_info("%s: stopping", strsignal(w->signum));
        ev_break(loop, EVBREAK_ALL);
    }
}

typedef struct Options {
    bool explicit_path, check_only;
} Options;

/* The command line into d and *o; returns -1 to go on, else the exit status. */
static int parse_args(int argc, char **argv, Daemon *d, Options *o)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'}, {"foreground", no_argument, NULL, 'f'},
        {"socket", required_argument, NULL, 's'}, {"broker", required_argument, NULL, 'b'},
        {"check-config", no_argument, NULL, 'C'}, {"version", no_argument, NULL, 'V'},
        {"help", no_argument, NULL, 'h'},         {0},
    };
    int c;
    while ((c = getopt_long(argc, argv, "c:fs:b:vh", opts, NULL)) != -1) {
        switch (c) {
        case 'c':
            d->config_path = optarg;
            o->explicit_path = true;
            break;
        case 'f':
            break;
        case 's':
            d->socket_override = optarg;
            break;
        case 'b':
            d->broker_override = optarg;
            break;
        case 'v':
            d->verbosity++;
            break;
        case 'C':
            o->check_only = true;
            break;
        case 'V':
            printf("mqttbridged %s\n", MQTTBRIDGE_VERSION);
            return 0;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "mqttbridged: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        return 2;
    }
    return -1;
}

/* Graceful stop: no new clients, DISCONNECT to the broker, clients told nothing more; what is
 * not delivered is said (kept in the spool, or lost). */
static void stop(Daemon *d)
{
    notify_stop(d->loop);
    ev_timer_stop(d->loop, &d->grace);
    ev_prepare_stop(d->loop, &d->stop_when);
    Session *s = d->broker.session;
    if (d->spool && spool_pending(d->spool)) {
        log_info("stopping with %zu messages kept in the spool for the next start",
                 spool_pending(d->spool));
    }
    size_t held = s->queued + s->inflight, kept = d->spool ? spool_pending(d->spool) : 0;
    if (held > kept) {
        log_warning("stopping with %zu messages not delivered to the broker (not in a spool: "
                    "lost)",
                    held - kept);
    }
    server_stop(&d->server);
    metrics_stop(d);
    names_free(&d->names);
    broker_stop(&d->broker);
    sessions_flush(d);
    spool_close(d->spool);
    d->spool = NULL;
    broker_free(&d->broker);
    mqtt_mount_free(&d->mount);
    sessions_free(d);
    router_free(&d->router);
    rpc_free(d);
    subs_free(d);
    waiters_free(d);
    hashmap_free(&d->uid_conns, free);
    answer_free();
    ops_free();
}

/* The router, its subscription identifiers starting somewhere new each run: a persistent
 * session may still hold the previous run's subscriptions, whose identifiers must not look
 * like ours. */
static int router_start(Router *r)
{
    uint32_t rnd;
    int e = router_init(r);
    if (e < 0) {
        return e;
    }
    if (getrandom(&rnd, sizeof(rnd), GRND_NONBLOCK) != sizeof(rnd)) {
        rnd = (uint32_t)now_ms() ^ (uint32_t)getpid() << 8;
    }
    r->next_subid = 1 + rnd % ROUTER_SUBID_MAX;
    return 0;
}

/* Descriptors beyond the clients': the broker link, the spool, the listener, logs, threads. */
#define FDS_RESERVED 64

/* As many open files as the hard limit allows (one per local client), said when raised, and
 * a warning when [ipc] max_clients cannot be reached. */
static void raise_fd_limit(const Config *cfg)
{
    struct rlimit r;
    if (getrlimit(RLIMIT_NOFILE, &r) < 0) {
        return; /* cannot happen; the limit stays what it is */
    }
    rlim_t was = r.rlim_cur;
    if (r.rlim_cur < r.rlim_max) {
        r.rlim_cur = r.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &r) == 0) {
            log_info("open-file limit raised from %llu to %llu (the hard limit)",
                     (unsigned long long)was, (unsigned long long)r.rlim_cur);
        } else {
            r.rlim_cur = was;
        }
    }
    if (r.rlim_cur != RLIM_INFINITY && cfg->ipc.max_clients + FDS_RESERVED > r.rlim_cur) {
        log_warning(
            "[ipc] max_clients = %zu needs %zu open files, the limit is %llu: clients "
            "beyond about %llu are refused (raise LimitNOFILE, or ulimit -Hn)",
            (size_t)cfg->ipc.max_clients, (size_t)cfg->ipc.max_clients + FDS_RESERVED,
            (unsigned long long)r.rlim_cur,
            (unsigned long long)(r.rlim_cur > FDS_RESERVED ? r.rlim_cur - FDS_RESERVED : 0));
    }
}

/* [topics] mount, with this host's name and the client id (as they are at start). */
static int setup_mount(Daemon *d, char *err, size_t errlen)
{
    char host[256] = "", why[400];
    if (gethostname(host, sizeof(host) - 1) < 0) {
        host[0] = 0; /* %h: empty, and mqtt_mount_setup says so */
    }
    if (mqtt_mount_setup(&d->mount, d->cfg.topics.mount, host, d->client_id,
                         d->cfg.topics.unmounted, why, sizeof(why)) < 0) {
        snprintf(err, errlen, "[topics] %s", why);
        return -1;
    }
    const char *will = d->cfg.will.topic;
    Buf scratch = {0};
    int r = will && *will ? mqtt_mount_out(&d->mount, VIEW_STR(will), false, &scratch) : 0;
    buf_free(&scratch);
    if (r < 0) {
        snprintf(err, errlen, "[will] topic with [topics] mount %s: %s", d->mount.prefix,
                 r == -E2BIG ? "longer than MQTT allows (65535 bytes)" : strerror(-r));
        return -1;
    }
    return 0;
}

/* --check-config: what the daemon would refuse at start, found without starting it. */
static int check_config(Daemon *d, bool explicit_path)
{
    char note[256], err[512];
    d->client_id = make_client_id(&d->cfg);
    int status = 0;
    if (!d->client_id) {
        fprintf(stderr, "mqttbridged: out of memory\n");
        status = 1;
    } else if (setup_mount(d, err, sizeof(err)) < 0) {
        fprintf(stderr, "mqttbridged: %s: %s\n", explicit_path ? d->config_path : "defaults", err);
        status = 1;
    } else {
        config_notes(&d->cfg, note, sizeof(note));
        printf("%s: configuration OK\n%s%s", explicit_path ? d->config_path : "defaults", note,
               note[0] ? "\n" : "");
    }
    mqtt_mount_free(&d->mount);
    free(d->client_id);
    config_free(&d->cfg);
    free(d->password);
    tls_context_unref(d->tls);
    return status;
}

int main(int argc, char **argv)
{
    static Daemon daemon;
    Daemon *d = &daemon;
    d->config_path = DEFAULT_CONFIG_FILE;
    log_init("mqttbridged");
    Options opt = {0};
    int status = parse_args(argc, argv, d, &opt);
    if (status >= 0) {
        return status;
    }
    bool explicit_path = opt.explicit_path, check_only = opt.check_only;

    char err[512];
    Loaded l;
    if (config_load(d, &l, explicit_path, err, sizeof(err)) < 0) {
        fprintf(stderr, "mqttbridged: %s\n", err);
        return 1;
    }
    d->cfg = l.cfg;
    d->password = l.password;
    d->tls = l.tls;
    if (check_only) {
        return check_config(d, explicit_path);
    }
    log_set_level(d->cfg.log.level);
    signal(SIGPIPE, SIG_IGN);

    raise_fd_limit(&d->cfg);
    d->loop = ev_default_loop(EVFLAG_AUTO);
    d->started_at = now_ms();
    d->client_id = make_client_id(&d->cfg);
    if (d->client_id && setup_mount(d, err, sizeof(err)) < 0) {
        log_error("%s", err);
        return 1;
    }
    if (mqtt_mount_active(&d->mount)) {
        log_info("topics are mounted at %s on the broker", d->mount.prefix);
    }
    subs_init(d);
    rpc_init(d);
    sessions_init(d);
    if (!d->client_id || router_start(&d->router) < 0 ||
        broker_init(&d->broker, d->loop, &d->cfg, d->tls, d->client_id, d->password, &d->mount,
                    bridge_on_event, d) < 0) {
        log_error("out of memory");
        return 1;
    }
    d->broker.on_input_done = bridge_input_done;
    if (d->cfg.queue.spool_dir && *d->cfg.queue.spool_dir) {
        if (open_spool(d) < 0) {
            return 1;
        }
    }
    names_init(&d->names, d->loop);
    int r = server_start(&d->server, d->loop, &d->cfg, &ops_server_callbacks, d);
    if (r < 0) {
        spool_close(d->spool);
        return 1;
    }
    ev_signal sig[4];
    const int signums[] = {SIGTERM, SIGINT, SIGHUP, SIGQUIT};
    for (int i = 0; i < 4; i++) {
        ev_signal_init(&sig[i], on_signal, signums[i]);
        sig[i].data = d;
        ev_signal_start(d->loop, &sig[i]);
    }
    log_info("mqttbridged %s started; broker %s, client id %s", MQTTBRIDGE_VERSION,
             d->cfg.broker.host_list, d->client_id);
    notify_status("connecting to %s", d->cfg.broker.host_list);
    notify_start(d->loop);
    metrics_start(d);
    notify_ready(); /* the socket accepts clients now; the broker may come later */
    broker_kick(&d->broker);
    ev_run(d->loop, 0);

    stop(d);
    for (int i = 0; i < 4; i++) {
        ev_signal_stop(d->loop, &sig[i]);
    }
    free(d->client_id);
    free(d->password);
    tls_context_unref(d->tls);
    config_free(&d->cfg);
    log_info("stopped");
    return 0;
}

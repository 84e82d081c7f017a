/* SPDX-License-Identifier: MIT */
/*
 * The daemon's statistics: the object of the `stats` reply (docs/protocol.md), and its
 * OpenMetrics exposition written to [metrics] textfile every `interval` seconds for
 * node_exporter's textfile collector - atomically (a temporary file in the same directory,
 * then rename), on a thread of its own so that the event loop never waits for the disk.
 */
#include "metrics.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ipc/openmetrics.h"
#include "log.h"
#include "spool.h"

static json_int_t avg(uint64_t sum, uint64_t n)
{
    return n ? (json_int_t)((sum + n / 2) / n) : 0;
}

/* The publish and ping round-trip histograms (counts per bucket, not cumulative). */
static json_t *histograms(const SessionStats *t)
{
    json_t *bounds = json_array(), *pub = json_array(), *ping = json_array();
    for (size_t i = 0; i <= SESSION_RTT_BUCKETS; i++) {
        if (i < SESSION_RTT_BUCKETS) {
            json_array_append_new(bounds, json_integer(session_rtt_bounds_ms[i]));
        }
        json_array_append_new(pub, json_integer((json_int_t)t->pub_rtt_hist[i]));
        json_array_append_new(ping, json_integer((json_int_t)t->ping_rtt_hist[i]));
    }
    return json_pack("{s:o, s:{s:o, s:I}, s:{s:o, s:I}}", "bounds_ms", bounds, "publish_rtt",
                     "counts", pub, "sum_ms", (json_int_t)t->pub_rtt_sum_ms, "ping_rtt", "counts",
                     ping, "sum_ms", (json_int_t)t->ping_rtt_sum_ms);
}

/* Messages a second in and out, over the last few seconds (sampled every second). */
#define RATE_SAMPLES 6
static struct {
    ev_timer tick;
    uint64_t in[RATE_SAMPLES], out[RATE_SAMPLES]; /* PUBLISH packets received and sent */
    size_t n, at;                                 /* samples taken (up to all), the next slot */
} rates;

static void on_sample(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    const SessionStats *st = &((Daemon *)t->data)->broker.session->stats;
    rates.in[rates.at] = st->sub_bytes_n;
    rates.out[rates.at] = st->pub_bytes_n;
    rates.at = (rates.at + 1) % RATE_SAMPLES;
    rates.n += rates.n < RATE_SAMPLES;
}

static json_t *per_second(const uint64_t *ring)
{
    if (rates.n < 2) {
        return json_real(0.0);
    }
    size_t newest = (rates.at + RATE_SAMPLES - 1) % RATE_SAMPLES;
    size_t oldest = rates.n < RATE_SAMPLES ? 0 : rates.at;
    if (ring[newest] < ring[oldest]) {
        return json_real(0); /* the counters were reset within the window */
    }
    return json_real((double)(ring[newest] - ring[oldest]) / (double)(rates.n - 1));
}

static json_t *quantiles(const uint64_t *hist)
{
    json_t *q = json_object();
    static const struct {
        const char *name;
        double q;
    } qs[] = {{"p50", 0.5}, {"p90", 0.9}, {"p99", 0.99}};
    for (size_t i = 0; q && i < 3; i++) {
        int64_t v = session_rtt_quantile(hist, qs[i].q);
        int64_t over = (int64_t)session_rtt_bounds_ms[SESSION_RTT_BUCKETS - 1] + 1;
        json_object_set_new(q, qs[i].name,
                            v < 0 ? json_null() : json_integer(v == INT64_MAX ? over : v));
    }
    return q;
}

json_t *metrics_stats(Daemon *d)
{
    Session *s = d->broker.session;
    const SessionStats *t = &s->stats;
    json_t *st = json_pack(
        "{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I,"
        " s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I}",
        "packets_sent", (json_int_t)t->packets_sent, "packets_received",
        (json_int_t)t->packets_received, "bytes_sent", (json_int_t)t->bytes_sent, "bytes_received",
        (json_int_t)t->bytes_received, "pub_ok_count", (json_int_t)t->pub_ok, "pub_fail_count",
        (json_int_t)t->pub_fail, "pub_rtt_ms", avg(t->pub_rtt_sum_ms, t->pub_rtt_n),
        "pub_package_avg_size", avg(t->pub_bytes_sum, t->pub_bytes_n), "sub_package_avg_size",
        avg(t->sub_bytes_sum, t->sub_bytes_n), "connections_sent", (json_int_t)t->connections_sent,
        "connections_failed", (json_int_t)t->connections_failed, "ping_sent_count",
        (json_int_t)t->ping_sent, "ping_received_count", (json_int_t)t->ping_received,
        "ping_rtt_ms", avg(t->ping_rtt_sum_ms, t->ping_received),
        /* extras */
        "reconnects", (json_int_t)t->reconnects, "queued", (json_int_t)s->queued, "inflight",
        (json_int_t)s->inflight, "queued_bytes", (json_int_t)s->queued_bytes, "local_clients",
        (json_int_t)d->server.n_admitted, "subscriptions", (json_int_t)d->router.filters.count,
        "messages_received", (json_int_t)t->messages_received, "messages_delivered",
        (json_int_t)d->stats.messages_delivered, "messages_dropped",
        (json_int_t)d->stats.messages_dropped, "duplicates_dropped",
        (json_int_t)t->duplicates_dropped, "clients_rejected", (json_int_t)d->server.rejected);
    json_object_set_new(st, "subscriptions_lost", json_integer((json_int_t)t->subscriptions_lost));
    json_object_set_new(st, "topic_aliases_used", json_integer((json_int_t)t->topic_aliases_used));
    json_object_set_new(st, "messages_expired", json_integer((json_int_t)t->messages_expired));
    json_object_set_new(st, "properties_dropped", json_integer((json_int_t)t->properties_dropped));
    json_object_set_new(st, "responses_unmatched", json_integer((json_int_t)d->rpc.unmatched));
    json_object_set_new(st, "sessions", json_integer((json_int_t)d->sessions.count));
    if (!st) {
        return NULL;
    }
    int64_t limited = s->rate_limited_since ? now_ms() - s->rate_limited_since : 0;
    json_object_set_new(st, "rate_limited_ms",
                        json_integer((json_int_t)(t->rate_limited_ms + (uint64_t)limited)));
    if (d->spool) {
        SpoolHealth h;
        spool_health(d->spool, &h);
        json_object_set_new(st, "spool_damaged_regions",
                            json_integer((json_int_t)h.damaged_regions));
        json_object_set_new(st, "spool_damaged_bytes", json_integer((json_int_t)h.damaged_bytes));
        json_object_set_new(st, "spool_pending", json_integer((json_int_t)spool_pending(d->spool)));
        json_object_set_new(st, "spool_bytes",
                            json_integer((json_int_t)spool_disk_bytes(d->spool)));
    }
    json_object_set_new(st, "histograms", histograms(t));
    json_object_set_new(st, "rates",
                        json_pack("{s:o, s:o}", "messages_in_per_s", per_second(rates.in),
                                  "messages_out_per_s", per_second(rates.out)));
    json_object_set_new(st, "percentiles",
                        json_pack("{s:o, s:o}", "publish_rtt_ms", quantiles(t->pub_rtt_hist),
                                  "ping_rtt_ms", quantiles(t->ping_rtt_hist)));
    return st;
}

/* ---- [metrics] textfile ---- */

/* The writer: the loop hands it the newest exposition; it writes one at a time. */
static struct {
    pthread_t thread;
    bool running, quit;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    char *path; /* of the job waiting (NULL: none) */
    Buf text;
    bool failing; /* the last write failed: logged once until one works */
    ev_timer tick;
} w = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

/* The writer thread: `text` into a new file beside path (a name of its own: never one somebody
 * else placed there), then renamed over path: readers see the old file or the new one, never
 * half of one. It is readable by all (node_exporter runs as another user), whatever the
 * daemon's umask. */
static void write_file(const char *path, const Buf *text)
{
    char tmp[4200];
    snprintf(tmp, sizeof(tmp), "%s.XXXXXX", path);
    int fd = mkostemp(tmp, O_CLOEXEC);
    int e = fd < 0 ? errno : 0;
    if (!e && fchmod(fd, 0644) < 0) {
        e = errno;
    }
    for (size_t off = 0; !e && off < text->len;) {
        ssize_t n = write(fd, text->data + off, text->len - off);
        if (n < 0 && errno != EINTR) {
            e = errno;
        }
        off += n > 0 ? (size_t)n : 0;
    }
    if (fd >= 0 && close(fd) < 0 && !e) {
        e = errno;
    }
    if (!e && rename(tmp, path) < 0) {
        e = errno;
    }
    if (e && !w.failing) {
        log_warning("metrics: cannot write %s: %s (logged once until it works)", path, strerror(e));
    } else if (!e && w.failing) {
        log_info("metrics: writing %s works again", path);
    }
    if (e && fd >= 0) {
        (void)unlink(tmp); /* what was written of it, if anything */
    }
    w.failing = e != 0;
}

static void *writer(void *arg)
{
    (void)arg;
    Buf text = {0};
    (void)pthread_mutex_lock(&w.mu); /* default mutex: cannot fail */
    while (!w.quit || w.path) {
        if (!w.path) {
            (void)pthread_cond_wait(&w.cv, &w.mu);
            continue;
        }
        char *path = w.path;
        w.path = NULL;
        Buf swap = text;
        text = w.text;
        w.text = swap;
        (void)pthread_mutex_unlock(&w.mu);
        write_file(path, &text);
        free(path);
        (void)pthread_mutex_lock(&w.mu);
    }
    (void)pthread_mutex_unlock(&w.mu);
    buf_free(&text);
    return NULL;
}

static void on_tick(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    Daemon *d = t->data;
    json_t *st = metrics_stats(d);
    Buf text = {0};
    char *path = strdup(d->cfg.metrics.textfile);
    if (!st || !path || openmetrics_write(&text, st) < 0) {
        log_warning("metrics: out of memory: %s not written this time", d->cfg.metrics.textfile);
        free(path);
    } else {
        (void)pthread_mutex_lock(&w.mu);
        free(w.path); /* a write still waiting: the newer one replaces it */
        w.path = path;
        buf_free(&w.text);
        w.text = text;
        text = (Buf){0};
        (void)pthread_cond_signal(&w.cv);
        (void)pthread_mutex_unlock(&w.mu);
    }
    buf_free(&text);
    json_decref(st);
}

void metrics_start(Daemon *d)
{
    const char *path = d->cfg.metrics.textfile;
    if (!ev_is_active(&rates.tick)) {
        ev_timer_init(&rates.tick, on_sample, 0.0, 1.0);
        rates.tick.data = d;
        ev_timer_start(d->loop, &rates.tick);
    }
    ev_timer_stop(d->loop, &w.tick);
    if (!path || !*path) {
        return;
    }
    if (!w.running) {
        int r = pthread_create(&w.thread, NULL, writer, NULL);
        if (r != 0) {
            log_error("metrics: cannot start the writer thread: %s; %s is not written", strerror(r),
                      path);
            return;
        }
        w.running = true;
    }
    double every = (double)d->cfg.metrics.interval;
    ev_timer_init(&w.tick, on_tick, 0.0, every); /* the first now */
    w.tick.data = d;
    ev_timer_start(d->loop, &w.tick);
}

void metrics_reload(Daemon *d)
{
    metrics_start(d);
}

void metrics_stop(Daemon *d)
{
    ev_timer_stop(d->loop, &rates.tick);
    ev_timer_stop(d->loop, &w.tick);
    if (!w.running) {
        return;
    }
    (void)pthread_mutex_lock(&w.mu);
    w.quit = true;
    (void)pthread_cond_signal(&w.cv);
    (void)pthread_mutex_unlock(&w.mu);
    (void)pthread_join(w.thread, NULL); /* after the write in flight, if any */
    w.running = false;
    buf_free(&w.text);
}

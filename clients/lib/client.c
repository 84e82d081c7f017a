/* SPDX-License-Identifier: MIT */
/* libmqttbridge: see include/mqttbridge/client.h. */
#include "mqttbridge/client.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "base64.h"
#include "hashmap.h"
#include "ipc/ndjson.h"
#include "ipc/protocol.h"
#include "utf8.h"

#define DEFAULT_SOCKET "/run/mqttbridge/mqttbridge.sock"
#define MAX_LINE       (64u << 20) /* a message event with a large payload */
#define MAX_KEPT       65536       /* messages kept for mqb_next; beyond, the oldest go */
#define READ_CHUNK     65536

typedef struct Waiter {
    int64_t id;
    mqb_reply_fn fn;
    void *userdata;
} Waiter;

struct mqb_client {
    int fd;
    LineReader in;
    Buf out;
    int64_t next_id;
    HashMap waiters; /* id -> Waiter */
    json_t *kept;    /* array: what no callback took, for mqb_next */
    mqb_event_fn on_event;
    void *event_ud;
    mqb_message_fn on_message;
    void *message_ud;
    bool eof;       /* nothing more comes from the daemon: nothing more is sent either */
    bool broken;    /* a write failed: nothing more is sent (what the daemon sent is read) */
    int error;      /* a read error seen after data that came first: reported next */
    unsigned depth; /* callbacks running (mqb_close from one is deferred) */
    bool closing;   /* mqb_close was called from a callback: freed when the last returns */
    char last_error[512];
};

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static View id_key(const int64_t *id)
{
    return VIEW(id, sizeof(*id));
}

const char *mqb_default_socket(void)
{
    const char *env = getenv("MQTTBRIDGE_SOCKET");
    return env && *env ? env : DEFAULT_SOCKET;
}

int mqb_connect(const char *path, mqb_client **ret)
{
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    path = path ? path : mqb_default_socket();
    if (strlen(path) >= sizeof(addr.sun_path)) {
        return -ENAMETOOLONG;
    }
    memcpy(addr.sun_path, path, strlen(path) + 1);
    mqb_client *c = calloc(1, sizeof(*c));
    if (!c || !(c->kept = json_array())) {
        free(c);
        return -ENOMEM;
    }
    c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    /* A local connect does not wait for the daemon: blocking is fine; then non-blocking. */
    if (c->fd < 0 || connect(c->fd, (struct sockaddr *)&addr, sizeof(addr)) < 0 ||
        fcntl(c->fd, F_SETFL, O_NONBLOCK) < 0) {
        int e = -errno;
        if (c->fd >= 0) {
            (void)close(c->fd); /* nothing was sent */
        }
        json_decref(c->kept);
        free(c);
        return e;
    }
    c->next_id = 1;
    line_reader_init(&c->in, MAX_LINE);
    hashmap_init(&c->waiters);
    *ret = c;
    return 0;
}

/* Whether requests can still go to the daemon. */
static bool sendable(const mqb_client *c)
{
    return !c->eof && !c->broken;
}

/* A write failed: nothing more is sent, what is queued is dropped. */
static void broke(mqb_client *c, int error)
{
    c->broken = true;
    c->error = c->error ? c->error : error;
    buf_clear(&c->out);
}

/* The connection ended (c->eof, so nothing can be sent any more): every reply callback still
 * waiting hears it (NULL), from a snapshot of the map taken first. */
static void fail_waiters(mqb_client *c)
{
    assert(c->eof);
    HashMap all = c->waiters;
    hashmap_init(&c->waiters);
    HashIter it;
    void *v;
    c->depth++;
    for (hashmap_iter(&all, &it); hashmap_iter_next(&it, &v);) {
        Waiter *w = v;
        w->fn(c, NULL, w->userdata);
    }
    c->depth--;
    hashmap_free(&all, free);
}

static void free_client(mqb_client *c)
{
    (void)close(c->fd); /* what was not written is abandoned, as the caller asked */
    line_reader_free(&c->in);
    buf_free(&c->out);
    hashmap_free(&c->waiters, free);
    json_decref(c->kept);
    free(c);
}

void mqb_close(mqb_client *c)
{
    if (!c || c->closing) {
        return;
    }
    c->eof = true;
    c->closing = true;
    fail_waiters(c);
    if (c->depth == 0) {
        free_client(c);
    } /* else: from a callback, freed once it has returned (mqb_process: -ECANCELED) */
}

/* A callback has returned: whether the client is still there (not closed from it). */
static bool survived(mqb_client *c)
{
    if (c->closing && c->depth == 0) {
        free_client(c);
        return false;
    }
    return !c->closing;
}

void mqb_on_event(mqb_client *c, mqb_event_fn fn, void *userdata)
{
    c->on_event = fn;
    c->event_ud = userdata;
}

void mqb_on_message(mqb_client *c, mqb_message_fn fn, void *userdata)
{
    c->on_message = fn;
    c->message_ud = userdata;
}

int mqb_fd(const mqb_client *c)
{
    return c->fd;
}

size_t mqb_unsent(const mqb_client *c)
{
    return buf_size(&c->out);
}

short mqb_poll_events(const mqb_client *c)
{
    return (short)(POLLIN | (buf_size(&c->out) && sendable(c) ? POLLOUT : 0));
}

const char *mqb_last_error(const mqb_client *c)
{
    return c->last_error;
}

/* ---- requests ---- */

/* The request just appended to c->out under `id` is answered to fn. */
static int64_t expect(mqb_client *c, int64_t id, mqb_reply_fn fn, void *userdata)
{
    assert(sendable(c));
    if (fn) {
        Waiter *w = malloc(sizeof(*w));
        if (!w || hashmap_put(&c->waiters, id_key(&id), w) < 0) {
            free(w);
            return -ENOMEM; /* the request is written all the same; its reply is kept */
        }
        *w = (Waiter){id, fn, userdata};
    }
    return id;
}

int64_t mqb_send(mqb_client *c, json_t *req, mqb_reply_fn fn, void *userdata)
{
    if (!c || !json_is_object(req)) {
        json_decref(req);
        return -EINVAL;
    }
    if (!sendable(c)) {
        json_decref(req);
        return -EPIPE;
    }
    int64_t id = c->next_id;
    if (json_object_set_new(req, "id", json_integer(id)) < 0 || write_json_line(&c->out, req) < 0) {
        return -ENOMEM; /* write_json_line took req */
    }
    c->next_id++;
    return expect(c, id, fn, userdata);
}

/* Members of `props` appended as `,"name":value` (a publish's further fields). */
static int put_members(Buf *out, const json_t *props)
{
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)props, k, v)
    {
        char *text = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
        int r = text ? buf_put_u8(out, ',') : -ENOMEM;
        if (r == 0 && (r = json_write_string(out, VIEW_STR(k))) == 0 &&
            (r = buf_put_u8(out, ':')) == 0) {
            r = buf_append(out, text, strlen(text));
        }
        free(text);
        if (r < 0) {
            return r;
        }
    }
    return 0;
}

static int put_publish(Buf *out, int64_t id, const mqb_publish_args *a)
{
    char head[160];
    int n = snprintf(
        head, sizeof(head), "{\"id\":%lld,\"op\":\"publish\",\"qos\":%d,\"retain\":%s,\"wait\":%s",
        (long long)id, a->qos, a->retain ? "true" : "false", a->no_wait ? "false" : "true");
    if (a->timeout_ms > 0) {
        n += snprintf(head + n, sizeof(head) - (size_t)n, ",\"timeout_ms\":%d", a->timeout_ms);
    }
    View payload = VIEW(a->payload, a->payload_len);
    int r = buf_append(out, head, (size_t)n);
    if (r == 0 && (r = buf_append(out, ",\"topic\":", 9)) == 0) {
        r = json_write_string(out, VIEW_STR(a->topic));
    }
    if (r == 0 && utf8_valid(payload, true)) {
        if ((r = buf_append(out, ",\"payload\":", 11)) == 0) {
            r = json_write_string(out, payload);
        }
    } else if (r == 0 && (r = buf_append(out, ",\"payload_b64\":\"", 16)) == 0 &&
               (r = base64_encode(out, payload)) == 0) {
        r = buf_put_u8(out, '"');
    }
    if (r == 0 && a->properties) {
        r = put_members(out, a->properties);
    }
    return r == 0 ? buf_append(out, "}\n", 2) : r;
}

int64_t mqb_publish(mqb_client *c, const mqb_publish_args *a, mqb_reply_fn fn, void *userdata)
{
    if (!c || !a || !a->topic || !utf8_valid(VIEW_STR(a->topic), false) ||
        (a->payload_len && !a->payload) || a->qos < 0 || a->qos > 2 ||
        (a->properties && !json_is_object(a->properties))) {
        return -EINVAL;
    }
    if (!sendable(c)) {
        return -EPIPE;
    }
    size_t mark = buf_mark(&c->out);
    int r = put_publish(&c->out, c->next_id, a);
    if (r < 0) {
        buf_rollback(&c->out, mark);
        return r;
    }
    return expect(c, c->next_id++, fn, userdata);
}

int64_t mqb_subscribe(mqb_client *c, const char *filter, int qos, mqb_reply_fn fn, void *userdata)
{
    if (!filter || !utf8_valid(VIEW_STR(filter), false) || qos < 0 || qos > 2) {
        return -EINVAL;
    }
    return mqb_send(c,
                    json_pack("{s:s, s:s, s:i}", "op", "subscribe", "filter", filter, "qos", qos),
                    fn, userdata);
}

int64_t mqb_unsubscribe(mqb_client *c, const char *filter, mqb_reply_fn fn, void *userdata)
{
    if (!filter || !utf8_valid(VIEW_STR(filter), false)) {
        return -EINVAL;
    }
    return mqb_send(c, json_pack("{s:s, s:s}", "op", "unsubscribe", "filter", filter), fn,
                    userdata);
}

int mqb_ack(mqb_client *c, uint64_t seq)
{
    char line[64];
    if (!c || !seq || seq > INT64_MAX) {
        return -EINVAL;
    }
    int n =
        snprintf(line, sizeof(line), "{\"op\":\"ack\",\"seq\":%llu}\n", (unsigned long long)seq);
    return sendable(c) ? buf_append(&c->out, line, (size_t)n) : -EPIPE;
}

bool mqb_reply_ok(const json_t *reply)
{
    return reply && json_is_true(json_object_get(reply, "ok"));
}

const char *mqb_reply_error(const json_t *reply, const char **ret_message)
{
    json_t *err = reply ? json_object_get(reply, "error") : NULL;
    if (ret_message) {
        *ret_message = json_string_value(json_object_get(err, "message"));
    }
    return mqb_reply_ok(reply) ? NULL : json_string_value(json_object_get(err, "code"));
}

/* ---- what the daemon sends ---- */

static void keep(mqb_client *c, json_t *m)
{
    if (json_array_size(c->kept) >= MAX_KEPT) {
        (void)json_array_remove(c->kept, 0); /* nobody reads them: the oldest go */
    }
    if (json_array_append(c->kept, m) < 0) {
        return; /* out of memory: dropped, as a slow reader's events are */
    }
}

/* A message event to the message callback; false when it is not a valid one. The payload
 * is decoded into a buffer of this call's own (a callback may process more messages). */
static bool to_message_fn(mqb_client *c, const json_t *m)
{
    const char *topic = json_string_value(json_object_get(m, "topic"));
    const json_t *text = json_object_get(m, "payload"), *b64 = json_object_get(m, "payload_b64");
    Buf decoded = {0};
    View payload = VIEW_NULL;
    if (!topic) {
        return false;
    }
    if (json_is_string(b64)) {
        if (base64_decode(&decoded, VIEW(json_string_value(b64), json_string_length(b64))) < 0) {
            buf_free(&decoded);
            return false;
        }
        payload = buf_view(&decoded);
    } else if (json_is_string(text)) {
        payload = VIEW(json_string_value(text), json_string_length(text));
    }
    json_int_t seq = json_integer_value(json_object_get(m, "seq"));
    mqb_message msg = {.topic = topic,
                       .payload = payload.p,
                       .payload_len = payload.n,
                       .qos = (int)json_integer_value(json_object_get(m, "qos")),
                       .retain = json_is_true(json_object_get(m, "retain")),
                       .seq = seq > 0 ? (uint64_t)seq : 0,
                       .redelivered = json_is_true(json_object_get(m, "redelivered")),
                       .event = m};
    c->depth++;
    c->on_message(c, &msg, c->message_ud);
    c->depth--;
    buf_free(&decoded);
    return true;
}

/* Hand one message from the daemon to whoever takes it, else keep it. */
static void dispatch(mqb_client *c, json_t *m)
{
    const char *event = json_string_value(json_object_get(m, "event"));
    if (event) {
        if (c->on_message && strcmp(event, "message") == 0 && to_message_fn(c, m)) {
            return;
        }
        if (c->on_event) {
            c->depth++;
            c->on_event(c, m, c->event_ud);
            c->depth--;
        } else {
            keep(c, m);
        }
        return;
    }
    json_t *id = json_object_get(m, "id");
    int64_t key = json_is_integer(id) ? (int64_t)json_integer_value(id) : 0;
    Waiter *w = key ? hashmap_remove(&c->waiters, id_key(&key)) : NULL;
    if (!w) {
        keep(c, m); /* no callback asked for it (or an error answered to an ack) */
        return;
    }
    Waiter copy = *w;
    free(w);
    c->depth++;
    copy.fn(c, m, copy.userdata);
    c->depth--;
}

static int write_some(mqb_client *c)
{
    while (buf_size(&c->out)) {
        ssize_t n = send(c->fd, c->out.data + c->out.off, buf_size(&c->out), MSG_NOSIGNAL);
        if (n < 0) {
            return errno == EAGAIN || errno == EINTR ? 0 : -errno;
        }
        buf_consume(&c->out, (size_t)n);
    }
    return 0;
}

/* Read what is there (at most a few chunks, so one busy connection cannot starve the rest of
 * the caller's loop). 1 when something came, 0 when nothing; at end of file or a read error
 * c->eof is set, and -EPIPE (or -errno) returned - unless something came first: then that
 * counts (1) and the error is kept in c->error for the next call, once what came is handled. */
static int read_some(mqb_client *c)
{
    for (int k = 0; k < 16; k++) {
        uint8_t *space = line_reader_space(&c->in, READ_CHUNK);
        if (!space) {
            return -ENOMEM;
        }
        ssize_t n = read(c->fd, space, READ_CHUNK);
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
            return k > 0;
        }
        if (n <= 0) {
            c->eof = true;
            c->error = c->error ? c->error : n < 0 ? -errno : -EPIPE;
            return k > 0 ? 1 : c->error;
        }
        line_reader_commit(&c->in, (size_t)n);
    }
    return 1;
}

/* The complete lines read so far, parsed and dispatched. -ECANCELED when a callback closed
 * the client (stop touching it), -EBADMSG for a line that is not JSON (skipped: the next call
 * goes on after it). */
static int dispatch_lines(mqb_client *c)
{
    View line;
    int r;
    while (!c->closing && (r = line_reader_next(&c->in, &line)) != 0) {
        if (r < 0 || !line.n) {
            continue; /* a line over 64 MiB (skipped) or an empty one */
        }
        json_t *m = json_loadb((const char *)line.p, line.n, JSON_ALLOW_NUL, NULL);
        if (!m) {
            return -EBADMSG;
        }
        dispatch(c, m);
        json_decref(m);
    }
    return c->closing ? -ECANCELED : 0;
}

/* What the public functions that run callbacks return when one closed the client: freed now
 * if no callback is still running. */
static int cancelled(mqb_client *c)
{
    (void)survived(c);
    return -ECANCELED;
}

int mqb_process(mqb_client *c)
{
    if (!c) {
        return -EINVAL;
    }
    int rd = c->eof ? 0 : read_some(c); /* first: a refusal may be there to read */
    int d = dispatch_lines(c);
    if (d == -ECANCELED) {
        return cancelled(c);
    }
    if (d < 0) {
        return d;
    }
    if (rd < 0 || (c->eof && rd == 0)) { /* everything that came before the end is handled */
        c->eof = true;
        fail_waiters(c);
        if (c->closing) {
            return cancelled(c);
        }
        return c->error ? c->error : rd < 0 ? rd : -EPIPE;
    }
    int w = write_some(c); /* what was queued, callbacks' requests included */
    if (w < 0) {
        broke(c, w); /* the daemon is going: what it sent last is still read */
    }
    return 0;
}

/* ---- blocking helpers ---- */

/* Wait until the socket is ready for `events`, at most until `deadline` (-1: none). poll's
 * revents, 0 on timeout, -EINTR when a signal came (the caller's to act on). */
static int wait_ready(mqb_client *c, short events, int64_t deadline)
{
    int left = deadline < 0 ? -1 : (int)(deadline - mono_ms());
    struct pollfd p = {.fd = c->fd, .events = events};
    int r = poll(&p, 1, deadline >= 0 && left < 0 ? 0 : left);
    if (r < 0) {
        return -errno;
    }
    return r ? p.revents : 0;
}

static int64_t deadline_of(int timeout_ms)
{
    return timeout_ms < 0 ? -1 : mono_ms() + timeout_ms;
}

static bool passed(int64_t deadline)
{
    return deadline >= 0 && mono_ms() >= deadline;
}

/* mqb_wait until an absolute deadline. */
static int wait_process(mqb_client *c, int64_t deadline)
{
    /* Lines read already (by a call this one is nested in) are handled without waiting. */
    bool ready = c->eof || line_reader_ready(&c->in);
    int ev = wait_ready(c, mqb_poll_events(c), ready ? 0 : deadline);
    ev = ready && ev >= 0 ? ev | POLLIN : ev;
    if (ev <= 0) {
        return ev;
    }
    int r = mqb_process(c);
    return r < 0 ? r : 1;
}

int mqb_wait(mqb_client *c, int timeout_ms)
{
    return c ? wait_process(c, deadline_of(timeout_ms)) : -EINVAL;
}

int mqb_flush(mqb_client *c, int timeout_ms)
{
    if (!c) {
        return -EINVAL;
    }
    int64_t deadline = deadline_of(timeout_ms);
    while (buf_size(&c->out)) {
        if (!sendable(c)) {
            return c->error ? c->error : -EPIPE;
        }
        int ev = wait_ready(c, POLLOUT, deadline); /* only writes: replies stay unread */
        int r = ev < 0 ? ev : (ev & (POLLOUT | POLLERR | POLLHUP)) ? write_some(c) : 0;
        if (r < 0 && r != -EINTR) {
            broke(c, r);
        }
        if (r < 0) {
            return r;
        }
        if (ev & (POLLERR | POLLHUP) && buf_size(&c->out)) {
            return -EPIPE;
        }
        if (ev == 0 && passed(deadline)) {
            return -ETIMEDOUT;
        }
    }
    return 0;
}

typedef struct Slot {
    json_t *reply;
    bool done;
} Slot;

static void fill_slot(mqb_client *c, const json_t *reply, void *userdata)
{
    (void)c;
    Slot *s = userdata;
    s->reply = reply ? json_incref((json_t *)reply) : NULL;
    s->done = true;
}

static void note_error(mqb_client *c, const json_t *reply)
{
    const char *msg = NULL, *code = mqb_reply_error(reply, &msg);
    snprintf(c->last_error, sizeof(c->last_error), "%s: %s", code ? code : "internal",
             msg ? msg : "");
}

/* Wait for the reply to request `id` (registered with fill_slot into *s). Whatever ends the
 * wait but the reply takes the waiter off first (s is the caller's stack). */
static int await_slot(mqb_client *c, int64_t id, Slot *s, int64_t deadline)
{
    int r = 0;
    while (!s->done && r >= 0) {
        r = wait_process(c, deadline);
        if (r == -ECANCELED) {
            return r; /* the client is gone, and its waiters with it */
        }
        if (!s->done && r >= 0 && passed(deadline)) {
            r = -ETIMEDOUT;
        }
    }
    if (!s->done) {
        free(hashmap_remove(&c->waiters, id_key(&id))); /* a late reply is kept */
        return r;
    }
    return s->reply ? 0 : -EPIPE;
}

int mqb_call(mqb_client *c, json_t *req, json_t **ret_reply, int timeout_ms)
{
    if (!c || !ret_reply) {
        json_decref(req);
        return -EINVAL;
    }
    Slot s = {0};
    int64_t id = mqb_send(c, req, fill_slot, &s);
    if (id < 0) {
        return (int)id;
    }
    int r = await_slot(c, id, &s, deadline_of(timeout_ms));
    if (r == 0) {
        *ret_reply = s.reply;
    }
    return r;
}

int mqb_publish_wait(mqb_client *c, const mqb_publish_args *a, int timeout_ms)
{
    Slot s = {0};
    int64_t id = mqb_publish(c, a, fill_slot, &s);
    if (id < 0) {
        return (int)id;
    }
    int r = await_slot(c, id, &s, deadline_of(timeout_ms));
    if (r == 0 && !mqb_reply_ok(s.reply)) {
        note_error(c, s.reply);
        r = -EPROTO;
    }
    json_decref(s.reply);
    return r;
}

int mqb_next(mqb_client *c, json_t **ret, int timeout_ms)
{
    if (!c || !ret) {
        return -EINVAL;
    }
    int64_t deadline = deadline_of(timeout_ms);
    while (json_array_size(c->kept) == 0) {
        int r = wait_process(c, deadline);
        if (r == -ECANCELED || (r < 0 && json_array_size(c->kept) == 0)) {
            return r;
        }
        if (json_array_size(c->kept) == 0 && passed(deadline)) {
            return 0;
        }
    }
    *ret = json_incref(json_array_get(c->kept, 0));
    (void)json_array_remove(c->kept, 0);
    return 1;
}

int mqb_next_line(mqb_client *c, const char **ret, size_t *ret_len, int timeout_ms)
{
    if (!c || !ret || !ret_len) {
        return -EINVAL;
    }
    int64_t deadline = deadline_of(timeout_ms);
    for (;;) {
        View line;
        int r = line_reader_next(&c->in, &line);
        if (r > 0 && line.n) {
            *ret = (const char *)line.p;
            *ret_len = line.n;
            return 1;
        }
        if (r != 0) {
            continue; /* an empty line, or one over 64 MiB (skipped) */
        }
        if (c->eof) { /* every line that came before it has been returned */
            return c->error ? c->error : -EPIPE;
        }
        int ev = wait_ready(c, mqb_poll_events(c), deadline);
        if (ev < 0) {
            return ev;
        }
        if ((ev & POLLOUT) && (r = write_some(c)) < 0) {
            broke(c, r); /* what the daemon wrote before it went is still read */
        }
        if ((ev & (POLLIN | POLLHUP | POLLERR)) && (r = read_some(c)) < 0 && !c->eof) {
            return r;
        }
        if (ev == 0 && passed(deadline)) {
            return 0;
        }
    }
}

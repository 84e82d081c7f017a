/* SPDX-License-Identifier: MIT */
/* Replies and subscription events to local clients: see answer.h. */
#include "answer.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "defaults.h"
#include "log.h"
#include "waiters.h"

/* One answer at a time is built here, then copied to the client's output: this module's only
 * state, so that a reply costs no allocation once the buffer has grown. */
static Buf scratch;

static void send_scratch(Client *c, int built)
{
    if (built < 0) {
        conn_close(&c->conn, "out of memory");
        return;
    }
    conn_send(&c->conn, buf_view(&scratch));
}

void answer_message(Client *c, View event)
{
    Daemon *d = c->d;
    /* The limit bounds a backlog: one message larger than the whole buffer still goes to a
     * client that has nothing else pending, or it could never be delivered at all. */
    size_t queued = conn_queued(&c->conn);
    if (queued && queued + event.n > d->cfg.ipc.client_buffer) {
        if (!c->conn.dropped) {
            log_warning("client %llu (pid %d) reads too slowly: dropping messages for it",
                        (unsigned long long)c->conn.serial, (int)c->conn.pid);
        }
        c->conn.dropped++;
        d->stats.messages_dropped++;
        return;
    }
    d->stats.messages_delivered++;
    conn_send(&c->conn, event);
}

void answer_ok(Client *c, json_t *id, json_t *fields)
{
    buf_clear(&scratch);
    send_scratch(c, reply_ok(&scratch, id, fields));
}

void answer_ok_reason(Client *c, json_t *id, int reason_code)
{
    buf_clear(&scratch);
    send_scratch(c, reply_ok_reason(&scratch, id, reason_code));
}

/* An error reply, with the broker's reason when there is one (reason -1: none). */
static void verror(Client *c, json_t *id, enum ipc_error code, int reason, const char *rs,
                   const char *fmt, va_list ap) __attribute__((format(printf, 6, 0)));
static void verror(Client *c, json_t *id, enum ipc_error code, int reason, const char *rs,
                   const char *fmt, va_list ap)
{
    char msg[512];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    buf_clear(&scratch);
    send_scratch(c, reply_refused(&scratch, id, code, msg, reason, rs));
}

void answer_error(Client *c, json_t *id, enum ipc_error code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    verror(c, id, code, -1, NULL, fmt, ap);
    va_end(ap);
}

void answer_refused(Client *c, json_t *id, const Waiter *w, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    verror(c, id, IPC_REFUSED, w->reason ? w->reason : -1, w->reason_string, fmt, ap);
    va_end(ap);
}

/* Why the session would not take a message, or failed it before sending (-errno). */
void answer_publish_failure(Client *c, json_t *id, int e, uint8_t qos)
{
    const Session *s = c->d->broker.session;
    const Config *cfg = &c->d->cfg;
    if (e == -EMSGSIZE) {
        answer_error(c, id, IPC_TOO_LARGE,
                     "the message is too large for the link (its PUBLISH may be at most %zu "
                     "bytes%s)",
                     session_max_publish(s),
                     s->limits.maximum_packet_size ? ": the broker's Maximum Packet Size" : "");
    } else if (e == -ENOTSUP && qos > s->limits.maximum_qos) {
        answer_error(c, id, IPC_REFUSED, "the broker accepts at most QoS %u (Maximum QoS)",
                     (unsigned)s->limits.maximum_qos);
    } else if (e == -ENOTSUP) {
        answer_error(c, id, IPC_REFUSED,
                     "the broker does not accept retained messages (Retain Available 0)");
    } else if (e == -ETIME) {
        answer_error(c, id, IPC_TIMEOUT,
                     "the message expired (message_expiry) in the daemon's queue before the "
                     "broker could take it: it was not sent");
    } else if (e == -E2BIG) {
        answer_error(c, id, IPC_TOO_LARGE,
                     "with [topics] mount %s the topic is longer than MQTT allows (65535 bytes): "
                     "it was not sent",
                     c->d->mount.prefix ? c->d->mount.prefix : "");
    } else if (e == -ENOBUFS) {
        answer_error(c, id, IPC_QUEUE_FULL,
                     "queue full: %zu messages, %zu bytes held ([queue] max_messages = %zu, "
                     "max_bytes = %zu)",
                     s->queued + s->inflight, s->queued_bytes, cfg->queue.max_messages,
                     cfg->queue.max_bytes);
    } else {
        answer_error(c, id, e == -EINVAL ? IPC_BAD_REQUEST : IPC_INTERNAL,
                     "cannot queue the message: %s", strerror(-e));
    }
}

void answer_cannot_wait(Client *c, json_t *id, size_t needed)
{
    if (waiters_full(c, needed)) {
        answer_error(c, id, IPC_QUEUE_FULL,
                     "%d requests of this connection already wait for the broker: wait for "
                     "their replies first",
                     MAX_WAITERS_PER_CLIENT);
    } else {
        answer_error(c, id, IPC_INTERNAL, "out of memory");
    }
}

void answer_unsubscribed(Client *c, View filter, const char *reason)
{
    json_t *ev = json_pack("{s:s, s:s%, s:s}", "event", "unsubscribed", "filter",
                           (const char *)filter.p, filter.n, "reason", reason);
    buf_clear(&scratch);
    send_scratch(c, write_json_line(&scratch, ev));
}

void answer_free(void)
{
    buf_free(&scratch);
}

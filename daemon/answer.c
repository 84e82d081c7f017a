/* SPDX-License-Identifier: MIT */
/* Replies and subscription events to local clients: see answer.h. */
#include "answer.h"

#include <stdarg.h>
#include <stdio.h>

#include "defaults.h"
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

void answer_ok(Client *c, json_t *id, json_t *fields)
{
    buf_clear(&scratch);
    send_scratch(c, reply_ok(&scratch, id, fields));
}

void answer_error(Client *c, json_t *id, enum ipc_error code, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    buf_clear(&scratch);
    send_scratch(c, reply_error(&scratch, id, code, msg));
}

void answer_refused(Client *c, json_t *id, const Waiter *w, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    buf_clear(&scratch);
    send_scratch(c, reply_refused(&scratch, id, IPC_REFUSED, msg, w->reason ? w->reason : -1,
                                  w->reason_string));
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

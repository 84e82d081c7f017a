/* SPDX-License-Identifier: MIT */
/*
 * Requests of local clients that wait: for the broker (PUBACK/PUBCOMP, SUBACK, UNSUBACK, the
 * PINGRESP of a retained-message barrier) or for the disk (a spooled publish). This module
 * owns a waiter's whole life: it is made by the op that sends the request, ends exactly once -
 * by its answer (waiter_complete), by its timer, or by its client leaving - and is freed here.
 * What an ending means (the reply, what else to update) is the business of the waiter's kind,
 * a set of callbacks that the op supplies (ops.c).
 */
#pragma once

#include "daemon.h"

typedef struct WaiterKind {
    /* The answer arrived: `result` as in the session's completion event, or a -errno from
     * the spool. Reply to the client. Each callback's reply is its last act: a reply that
     * cannot be queued closes the client, which frees the waiter. */
    void (*done)(Waiter *w, int result);
    /* The timer ran out: reply, and forget the request in the session. */
    void (*timeout)(Waiter *w);
    /* The client left: forget the request in the session; there is nobody to reply to. */
    void (*gone)(Waiter *w);
    /* Optional: called first with an answer; true when it was only a step (a request's
     * PUBLISH confirmed, its response still to come): the waiter then goes on waiting. */
    bool (*progress)(Waiter *w, int result);
} WaiterKind;

struct Waiter {
    DList link; /* in Client.waiters */
    Client *c;
    const WaiterKind *kind;
    json_t *id; /* the request's id (a reference), NULL for null */
    ev_timer timer;
    bool ending;             /* its kind's callback runs: it is not ended a second time */
    SessionMsg *msg;         /* publish with wait: the message the broker must confirm, else NULL */
    SpoolWait durable;       /* publish with wait false: until the spool has it on disk */
    uint8_t qos;             /* publish: its QoS; subscribe: the QoS asked for */
    uint8_t reason;          /* MQTT 5: the reason code the broker answered with */
    char reason_text[160];   /* "Not authorized (0x87): its reason string", or "" */
    char reason_string[128]; /* the broker's reason string alone (truncated), or "" */
    char filter[];           /* subscribe / unsubscribe / barrier */
};

/* A waiter for c's request `id`, with a timer when timeout_ms > 0; NULL when c already has
 * MAX_WAITERS_PER_CLIENT of them, or out of memory (waiters_full tells which). */
Waiter *waiter_new(Client *c, const WaiterKind *kind, json_t *id, View filter, int64_t timeout_ms);
/* Whether `more` waiters would pass c's limit. */
bool waiters_full(const Client *c, size_t more);
/* The broker's MQTT 5 answer to w's request, kept for its reply (before waiter_complete). */
void waiter_set_reason(Waiter *w, uint8_t reason, View reason_string);
/* The answer to w's request: its kind's done(), then w is freed. */
void waiter_complete(Waiter *w, int result);
/* End w without a reply and without closing its client (for callers in the middle of
 * changing the client, which always send it something next). */
void waiter_cancel(Waiter *w);
/* c's first waiter of `kind` for exactly `filter`, or NULL. */
Waiter *waiter_find(Client *c, const WaiterKind *kind, View filter);
/* c is closing: every waiter's kind gone(), then all are freed. */
void waiters_client_gone(Client *c);
/* At the end: the ended waiters the daemon kept for reuse. */
void waiters_free(Daemon *d);

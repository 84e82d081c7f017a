/* SPDX-License-Identifier: MIT */
/*
 * What the daemon writes to a local client: message events within its buffer, replies to its
 * requests and the events about its own subscriptions. Built one at a time in this module's buffer
 * and queued on the client (server.c); a reply that cannot be built closes the client.
 */
#pragma once

#include "daemon.h"

/* A message event (built by the caller) toward c, unless it would pass [ipc] client_buffer:
 * then it is dropped and counted, and c hears how many once it has caught up. */
void answer_message(Client *c, View event);
/* {"id":..,"ok":true,...fields}; steals `fields` (may be NULL). */
void answer_ok(Client *c, json_t *id, json_t *fields);
/* Success with the broker's MQTT 5 reason code (e.g. 0x10 No matching subscribers). */
void answer_ok_reason(Client *c, json_t *id, int reason_code);
/* {"id":..,"ok":false,"error":{"code":..,"message":..}}. */
void answer_error(Client *c, json_t *id, enum ipc_error code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* `refused`, with the reason code and reason string the broker answered w's request with
 * (MQTT 5; none with 3.1.1). */
void answer_refused(Client *c, json_t *id, const Waiter *w, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Why the session would not take a message (session_publish's -errno), or failed it before
 * sending (PUBLISH_DONE): too large for the link, above the broker's limits, expired, queue
 * full, invalid. */
void answer_publish_failure(Client *c, json_t *id, int e, uint8_t qos);
/* A request that cannot wait: c already has MAX_WAITERS_PER_CLIENT waiting (queue_full), or
 * no memory for one more (internal). `needed`: the waiters the request would make. */
void answer_cannot_wait(Client *c, json_t *id, size_t needed);
/* {"event":"unsubscribed","filter":..,"reason":..}: c no longer holds `filter`. */
void answer_unsubscribed(Client *c, View filter, const char *reason);
/* Free the buffer (at exit). */
void answer_free(void);

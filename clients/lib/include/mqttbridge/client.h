/* SPDX-License-Identifier: MIT */
/*
 * libmqttbridge: a client of mqttbridged's local socket (docs/protocol.md, docs/clients.md).
 *
 * A connection to the daemon speaks newline-delimited JSON; this library frames it, numbers
 * requests, matches replies to them, decodes message payloads and hands everything to your
 * code in one of two ways, which mix freely:
 *
 *   - In an event loop: watch mqb_fd() for mqb_poll_events(), call mqb_process() when it is
 *     ready (it never blocks), and get replies and events through callbacks.
 *   - In a simple program: the blocking helpers (mqb_call, mqb_publish_wait, mqb_next) wait
 *     with a timeout.
 *
 * A message from the daemon goes to the callback that is set for it (the reply callback given
 * with its request, the message callback, the event callback); whatever no callback takes is
 * kept, in order, for mqb_next. Requests and replies are jansson objects (`json_t`), as the
 * protocol defines them; pkg-config's `mqttbridge` brings jansson's flags along.
 *
 * A client is used from one thread at a time. Functions that return int give 0 (or a positive
 * count) on success and a negative errno on failure: -EPIPE when the daemon closed the
 * connection, -ETIMEDOUT when a wait ran out, -EPROTO when the daemon answered with an error
 * (mqb_last_error() says which), -ENOMEM, -EINVAL for arguments the protocol cannot carry.
 */
#pragma once

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MQB_VERSION_MAJOR 0
#define MQB_VERSION_MINOR 1
#define MQB_VERSION_PATCH 0

typedef struct mqb_client mqb_client;

/* The socket mqb_connect uses for NULL: $MQTTBRIDGE_SOCKET, else
 * /run/mqttbridge/mqttbridge.sock. */
const char *mqb_default_socket(void);

/* Connect to the daemon's socket (`path` NULL: mqb_default_socket()). -ENOENT: no socket
 * there, -ECONNREFUSED: no daemon listening, -EACCES: not allowed to. */
int mqb_connect(const char *path, mqb_client **ret);
/* Close and free. Reply callbacks still waiting are called with a NULL reply first. */
void mqb_close(mqb_client *c);

/* ---- callbacks ---- */

/* A reply: `reply` is the whole object ({"id":..,"ok":true,...} or {"ok":false,"error":..}),
 * valid during the call; NULL when the connection ended before it came. */
typedef void (*mqb_reply_fn)(mqb_client *c, const json_t *reply, void *userdata);
/* An event ({"event":"connected",...}), valid during the call. */
typedef void (*mqb_event_fn)(mqb_client *c, const json_t *event, void *userdata);

/* A message event, decoded. Valid during the call. */
typedef struct mqb_message {
    const char *topic;
    const uint8_t *payload; /* the bytes, whether they came as text or base64 */
    size_t payload_len;
    int qos;
    bool retain;
    uint64_t seq; /* in a named session, QoS 1/2: its number (acknowledge with mqb_ack); 0 */
    bool redelivered;
    const json_t *event; /* the whole event: MQTT 5 properties and all */
} mqb_message;
typedef void (*mqb_message_fn)(mqb_client *c, const mqb_message *m, void *userdata);

/* Events (other than messages, when a message callback is set) go to `fn`; NULL: kept. */
void mqb_on_event(mqb_client *c, mqb_event_fn fn, void *userdata);
/* Message events go to `fn`; NULL: to the event callback, or kept. */
void mqb_on_message(mqb_client *c, mqb_message_fn fn, void *userdata);

/* ---- requests (queued; written by mqb_process, mqb_flush or any blocking helper) ---- */

/* Any request: `req` (an object with "op"; stolen, even on failure) gets the next "id".
 * Its reply goes to `fn` (NULL: kept for mqb_next). Returns the id (> 0) or -errno. */
int64_t mqb_send(mqb_client *c, json_t *req, mqb_reply_fn fn, void *userdata);

typedef struct mqb_publish_args {
    const char *topic;
    const void *payload; /* sent as text when it is valid UTF-8, else as base64 */
    size_t payload_len;
    int qos; /* 0, 1 or 2 */
    bool retain;
    bool no_wait;   /* answered when the daemon has queued it, not when the broker has it */
    int timeout_ms; /* how long the daemon waits for the broker; 0: its default */
    const json_t *properties; /* more request fields (MQTT 5: content_type, user_properties,
                                 message_expiry, ... as docs/protocol.md names them), or NULL */
} mqb_publish_args;

/* A publish, encoded without building a JSON tree (quick for streams of them). */
int64_t mqb_publish(mqb_client *c, const mqb_publish_args *a, mqb_reply_fn fn, void *userdata);
int64_t mqb_subscribe(mqb_client *c, const char *filter, int qos, mqb_reply_fn fn, void *userdata);
int64_t mqb_unsubscribe(mqb_client *c, const char *filter, mqb_reply_fn fn, void *userdata);
/* In a named session: every message up to `seq` is processed (no reply unless it fails). */
int mqb_ack(mqb_client *c, uint64_t seq);

/* Whether a reply is a success; else its error code ("timeout", "refused", ...) and message
 * (either pointer may be NULL). Both valid while the reply is. */
bool mqb_reply_ok(const json_t *reply);
const char *mqb_reply_error(const json_t *reply, const char **ret_message);

/* ---- in an event loop ---- */

int mqb_fd(const mqb_client *c);
/* Bytes of requests not written to the daemon yet (to hold back a producer). */
size_t mqb_unsent(const mqb_client *c);
/* POLLIN, and POLLOUT while requests wait to be written. */
short mqb_poll_events(const mqb_client *c);
/* Write what it can, read what is there, call the callbacks; never blocks. 0, or -EPIPE once
 * the daemon closed the connection (the callbacks have had everything it sent), -errno. */
int mqb_process(mqb_client *c);

/* ---- blocking helpers (timeout_ms < 0: no limit) ---- */

/* Wait until the socket is ready (at most timeout_ms), then mqb_process: 1 when it was, 0 on
 * timeout, -errno. */
int mqb_wait(mqb_client *c, int timeout_ms);
/* Write every queued request. */
int mqb_flush(mqb_client *c, int timeout_ms);
/* Send `req` (stolen) and wait for its reply (yours to json_decref). Callbacks run meanwhile;
 * what none takes is kept for mqb_next. 0, -ETIMEDOUT (a late reply is kept), -EPIPE. */
int mqb_call(mqb_client *c, json_t *req, json_t **ret_reply, int timeout_ms);
/* Publish and wait for the daemon's answer: 0 when the broker has it (or, with no_wait, the
 * daemon queued it); -EPROTO when the daemon answered an error (mqb_last_error); -errno. */
int mqb_publish_wait(mqb_client *c, const mqb_publish_args *a, int timeout_ms);
/* The next message no callback took (yours to json_decref): 1, 0 on timeout, -errno. */
int mqb_next(mqb_client *c, json_t **ret, int timeout_ms);
/* The next line exactly as the daemon wrote it, without parsing it or passing it to any
 * callback (for tools that glance at many replies): 1 with *ret and *ret_len valid until the next
 * call, 0 on timeout, -errno. Messages kept for mqb_next are not among them. */
int mqb_next_line(mqb_client *c, const char **ret, size_t *ret_len, int timeout_ms);

/* The last error the daemon answered a blocking helper with ("refused: ..."), or "". */
const char *mqb_last_error(const mqb_client *c);

#ifdef __cplusplus
}
#endif

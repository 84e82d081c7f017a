/* SPDX-License-Identifier: MIT */
/*
 * The local IPC protocol's schema layer (../shared/spec/ipc-protocol.md): one JSON line in,
 * one typed Request out; typed replies and events out as JSON lines. Pure: jansson and
 * buffers only. Transport and policy live in daemon/.
 */
#pragma once

#include <jansson.h>

#include "buf.h"
#include "mqtt/codec.h"

enum ipc_op {
    OP_PUBLISH,
    OP_SUBSCRIBE,
    OP_UNSUBSCRIBE,
    OP_STATUS,
    OP_STATS,
    OP_PING,
    OP_EVENTS,
    OP_RECONNECT,
    OP_STATS_RESET,
    OP_RELOAD,
    OP_REQUEST,
    OP_SESSION,
    OP_ACK,
    OP_SESSION_END,
    OP_SESSIONS,
    OP_COUNT,
};

enum ipc_error {
    IPC_OK = 0,
    IPC_BAD_JSON,
    IPC_BAD_REQUEST,
    IPC_UNKNOWN_OP,
    IPC_TOO_LARGE,
    IPC_FORBIDDEN,
    IPC_NOT_SUBSCRIBED,
    IPC_QUEUE_FULL,
    IPC_TIMEOUT,
    IPC_REFUSED,
    IPC_SHUTTING_DOWN,
    IPC_INTERNAL,
};

const char *ipc_op_name(enum ipc_op op);
const char *ipc_error_code(enum ipc_error e); /* "bad_json", ... */

enum ipc_encoding { ENC_AUTO, ENC_BASE64 };

typedef struct Request {
    enum ipc_op op;
    json_t *root; /* owns everything below */
    json_t *id;   /* borrowed from root; NULL means null */
    View topic;   /* publish: topic; subscribe/unsubscribe: filter */
    View payload; /* publish: the bytes (base64 already decoded) */
    Buf decoded;  /* owns payload bytes when payload_b64 was used */
    uint8_t qos;
    bool retain, wait;
    int64_t timeout_ms; /* -1: the daemon's default */
    enum ipc_encoding encoding;
    int events_connection, events_ping; /* -1 absent, else 0/1 */
    /* MQTT 5. publish and request: the message's properties but Message Expiry, encoded
     * (mqtt_props_encode, PUBLISH), and its expiry in seconds (0: none). subscribe: the
     * subscription options. v5_field names the first field given that only MQTT 5 can carry
     * (NULL: none), for a link that speaks 3.1.1. */
    Buf props;
    uint32_t message_expiry;
    bool no_local, retain_as_published;
    uint8_t retain_handling;
    const char *v5_field;
    /* Named sessions: session and session_end's name (UTF-8, 1 to 128 bytes), session's expiry
     * in seconds (-1: the default), ack's seq (>= 1). */
    View name;
    int64_t expiry;
    uint64_t seq;
} Request;

typedef struct IpcError {
    enum ipc_error code;
    char message[160];
} IpcError;

/* Parse one line. On failure returns -EINVAL with *err filled, and req->id set to the
 * request's id when it could be read (so the error reply can echo it); call request_free()
 * either way. */
int request_parse(View line, Request *req, IpcError *err);
void request_free(Request *req);

/* Replies: one JSON line each, appended to `out`. `fields` (stolen, may be NULL) holds the
 * op-specific members of a success reply. */
int reply_ok(Buf *out, json_t *id, json_t *fields);
/* `{"id":ID,"ok":true,"reason_code":R}`, as reply_ok writes it, without building a tree. */
int reply_ok_reason(Buf *out, json_t *id, int reason_code);
int reply_error(Buf *out, json_t *id, enum ipc_error code, const char *message);
/* The same with the broker's MQTT 5 answer in the error object: "reason_code" (when >= 0)
 * and "reason", its reason string (when not empty). */
int reply_refused(Buf *out, json_t *id, enum ipc_error code, const char *message, int reason_code,
                  const char *reason);
/* Any object as one line (events other than message). Steals `obj`. */
int write_json_line(Buf *out, json_t *obj);

/* `s` (valid UTF-8, U+0000 allowed) as a quoted JSON string. */
int json_write_string(Buf *out, View s);

/* The message event, written directly (it is the hot path): `payload` as text when the
 * encoding is auto and the bytes are valid UTF-8, else `payload_b64`; the MQTT 5 properties
 * the message had (`props`, decoded; NULL or empty: none) as the fields publish takes, the
 * Correlation Data as `correlation_data` by the payload's rule, else `correlation_data_b64`. */
int event_message(Buf *out, View topic, View payload, uint8_t qos, bool retain, bool base64,
                  const MqttProps *props);
/* The same in a named session: with "seq" (when not 0) and "redelivered": true (when set). */
int event_message_seq(Buf *out, View topic, View payload, uint8_t qos, bool retain, bool base64,
                      const MqttProps *props, uint64_t seq, bool redelivered);
/* The reply to a request op: {"id":ID,"ok":true,"response":{the message event's topic,
 * payload and property fields}}. */
int reply_response(Buf *out, json_t *id, View topic, View payload, bool base64,
                   const MqttProps *props);

/* SPDX-License-Identifier: MIT */
/*
 * A small blocking client of the mqttbridged socket, for mqttctl and other tools: connect,
 * send requests (ids assigned here), read replies and events with a timeout.
 */
#pragma once

#include <jansson.h>

#include "ipc/ndjson.h"

typedef struct IpcClient {
    int fd;
    LineReader in;
    Buf out;
    json_int_t next_id;
    json_t *pending; /* array of messages read while waiting for something else */
} IpcClient;

/* Connect to the daemon's socket. -errno on failure (-ENOENT: no socket, -ECONNREFUSED:
 * nobody listening). */
int ipc_connect(IpcClient *c, const char *path);
void ipc_close(IpcClient *c);

/* Queue a request (stolen), giving it the next id; written by ipc_flush or ipc_read. */
json_int_t ipc_queue(IpcClient *c, json_t *req);
/* Write what is queued; blocks up to timeout_ms (-1 forever). */
int ipc_flush(IpcClient *c, int timeout_ms);
/* The next message from the daemon (caller owns it): 1, 0 on timeout, -EPIPE at EOF. Writes
 * queued requests meanwhile, so a pipelining caller never deadlocks. */
int ipc_read(IpcClient *c, json_t **ret, int timeout_ms);
/* Send one request (stolen) and wait for its reply (caller owns it): 0, -ETIMEDOUT, -EPIPE.
 * Messages read meanwhile are kept for ipc_read. */
int ipc_call(IpcClient *c, json_t *req, json_t **ret_reply, int timeout_ms);
/* The next line as it came (valid until the next read), for callers that only need to
 * glance at most replies: 1, 0 on timeout, -errno. Ignores what ipc_call kept. */
int ipc_read_raw(IpcClient *c, View *ret, int timeout_ms);
/* A message kept by ipc_call (1), or 0 when there is none. */
int ipc_read_pending(IpcClient *c, json_t **ret);

/* SPDX-License-Identifier: MIT */
/*
 * The hot requests, publish and ack, parsed without building a JSON tree: jsmn finds the
 * tokens of a flat object in a caller's array, and the values are read in place. It takes a
 * line only when it is sure to read it as request_parse does (jansson): a publish with topic,
 * payload (text), qos, retain, wait, timeout_ms and id; an ack with seq and id; each member once,
 * values of the plain kinds. Anything else (other members, MQTT 5 properties, payload_b64, an error
 * to report, an id with escapes) it leaves to request_parse. The fuzz harness
 * tests/fuzz/fuzz_fast.c holds it to that: whatever it takes, jansson's path reads alike.
 *
 * What it allocates: the id (a json_t, as the replies take one; none for null), and escapes
 * are decoded into `scratch`, which the caller keeps (and clears) from line to line.
 */
#pragma once

#include "ipc/protocol.h"

/* 1: *req is the request (views into `line` and `scratch`; request_free() it); 0: not one
 * this path takes, *req zeroed: parse it with request_parse. */
int request_parse_fast(View line, Request *req, Buf *scratch);

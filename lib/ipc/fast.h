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
 * What it allocates: nothing once warm. Escapes are decoded into a buffer the caller keeps
 * from line to line (FastScratch). An integer id is a json_t, as the replies take one; the
 * scratch keeps the last FAST_IDS of them and gives one again once every other holder (the
 * request, a waiter) has let go (not in an ASan build: KEEP_SPARES in defaults.h); a string
 * id is a new json_t, a null id none.
 */
#pragma once

#include "ipc/protocol.h"

enum { FAST_IDS = 128 };

/* Zeroed to start; fast_scratch_free() at the end. */
typedef struct FastScratch {
    Buf text;              /* escapes decoded */
    json_t *ids[FAST_IDS]; /* integer ids, a ring: each held here once */
    unsigned next;         /* the ring's oldest */
} FastScratch;

/* 1: *req is the request (views into `line` and `scratch`; request_free() it); 0: not one
 * this path takes, *req zeroed: parse it with request_parse. */
int request_parse_fast(View line, Request *req, FastScratch *scratch);
void fast_scratch_free(FastScratch *scratch);

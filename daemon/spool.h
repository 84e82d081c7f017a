/* SPDX-License-Identifier: MIT */
/*
 * The durable spool: QoS 1/2 publishes written to disk before the local client is told they
 * were accepted, and forgotten once the broker acknowledged them. A write-ahead log of
 * segment files in [queue] spool_dir (record format: lib/spool/record.h).
 *
 * fsync happens on a helper thread, so the event loop never waits for the disk:
 *   always  every accepted message is fsynced before its acceptance is answered
 *   batch   fsyncs are grouped (every 5 ms or 256 records), answers wait for their group
 *   never   answered after write(2): survives a daemon crash, not a power cut
 */
#pragma once

#include <ev.h>

#include "buf.h"
#include "config.h"

typedef struct Spool Spool;

typedef void (*spool_recovered_cb)(void *ud, uint64_t seq, uint8_t qos, bool retain, View topic,
                                   View payload);
typedef void (*spool_durable_cb)(void *ud);

/* A wait for durability; embed it in the waiting object. */
typedef struct SpoolWait {
    struct SpoolWait *prev, *next;
    uint64_t mark;
    spool_durable_cb cb;
    void *ud;
} SpoolWait;

/* Open (creating the directory), recover pending messages in order through `each`, and take
 * an exclusive lock on the directory. -errno with a logged reason on failure. */
int spool_open(struct ev_loop *loop, const char *dir, enum fsync_mode mode, spool_recovered_cb each,
               void *ud, Spool **ret);
/* Flush, wait for the last fsync, close. */
void spool_close(Spool *s);

/* Append a message; *ret_seq names it, *ret_mark is what spool_wait needs. */
int spool_add(Spool *s, uint8_t qos, bool retain, View topic, View payload, uint64_t *ret_seq,
              uint64_t *ret_mark);
/* The broker has message `seq`: forget it (compacting the log as segments empty). */
void spool_done(Spool *s, uint64_t seq);
/* Call cb(ud) once everything up to `mark` is durable (now, if it already is). */
void spool_wait(Spool *s, SpoolWait *w, uint64_t mark, spool_durable_cb cb, void *ud);
void spool_wait_cancel(SpoolWait *w);
/* Messages in the spool, and its size on disk. */
size_t spool_pending(const Spool *s);
uint64_t spool_disk_bytes(const Spool *s);

/* SPDX-License-Identifier: MIT */
/*
 * The durable spool: QoS 1/2 publishes written to disk before the local client is told they
 * were accepted, and forgotten once the broker acknowledged them, with the send state that
 * makes QoS 2 exactly once across a kill -9 (the packet id each message went out under,
 * whether its PUBREC came) and the incoming QoS 2 packet ids held between PUBREC and PUBREL.
 * It also holds the named local sessions (daemon/sessions.c): each session (its name, owner,
 * expiry and subscriptions, rewritten whole when they change), its latest acknowledgement, and
 * the messages kept for it until they are acknowledged.
 * A write-ahead log of segment files in [queue] spool_dir (format: lib/spool/record.h).
 *
 * fsync happens on a helper thread, so the event loop does not wait for the disk to sync:
 *   always  every accepted message is fsynced before its acceptance is answered
 *   batch   fsyncs are grouped (every 5 ms or 256 records), answers wait for their group
 *   never   answered after write(2): survives a daemon crash, not a power cut
 * Compaction (copying what is still pending out of mostly-dead segments, so that they can be
 * deleted) reads, writes and syncs on the same thread, in every mode.
 *
 * What the calling thread does with the disk: every record is written with write(2) there,
 * so a daemon crash never loses one that was written (a failed write leaves the segment as it
 * was and returns -errno); segment files are created, opened and deleted there; spool_open
 * reads the whole spool and syncs the segment it starts (with what recovery copied into it)
 * there, before the event loop runs; spool_close waits for the last sync; and with 64 sync
 * jobs pending at once, the next one waits for the disk (nothing else could go on anyway).
 */
#pragma once

#include <ev.h>

#include "buf.h"
#include "config.h"
#include "spool/record.h"

typedef struct Spool Spool;

/* A pending message handed back by spool_open. Views are valid during the callback only. */
typedef struct SpoolMessage {
    uint64_t seq;
    uint8_t qos;
    bool retain;
    View topic, payload;
    View props;         /* MQTT 5: its properties but Message Expiry (a PUBLISH block) */
    int64_t expires_at; /* MQTT 5: when its Message Expiry ends (Unix time, ms); 0 = never */
    uint16_t packet_id; /* 0: never sent (or written by format 1, which did not record ids) */
    bool pubrec;        /* QoS 2: PUBREC received; only PUBREL/PUBCOMP remain */
    /* A newer message holds the same packet id. Ids are reused only once the broker has
     * acknowledged their message, so this one is done (its DONE record was lost): the
     * caller forgets it with spool_done once spool_open has returned. */
    bool superseded;
    /* A message kept for a named local session instead of queued for the broker: */
    uint64_t session;     /* the session's id (SpoolSession.id); 0: queued for the broker */
    uint64_t session_seq; /* its number in the session */
    int64_t kept_at;      /* when it came (Unix time, ms) */
    bool base64;          /* the payload encoding its session asked for */
} SpoolMessage;

/* What spool_open hands back, in the order they were first written: a session comes before
 * the messages kept for it. A kept message may name a session that did not come back (its end
 * was written, the message's DONE was lost): the caller forgets it with spool_done. */
typedef struct SpoolRecovery {
    void (*message)(void *ud, const SpoolMessage *m);
    void (*session)(void *ud, const SpoolSession *s); /* views valid during the call only */
    void *ud;
} SpoolRecovery;
/* error: 0 when durable, -errno when the fdatasync covering it failed (not durable). */
typedef void (*spool_durable_cb)(void *ud, int error);

/* A wait for durability; embed it in the waiting object. */
typedef struct SpoolWait {
    struct SpoolWait *prev, *next;
    uint64_t mark;
    spool_durable_cb cb;
    void *ud;
    int error;
    bool resolved; /* the sync covering `mark` finished (with `error`); cb not called yet */
} SpoolWait;

/* What recovery found at open, and whether writing works now. */
typedef struct SpoolHealth {
    uint64_t damaged_regions, damaged_bytes, torn_bytes; /* found by recovery at open */
    int write_error; /* current write-failure episode: positive errno, 0 when writing works */
} SpoolHealth;

/* Open (creating the directory), hand back what it holds through `cb`, and take an exclusive
 * lock on the directory. Reads spool formats 1 to 4, writes 4; a segment of a newer format
 * makes it fail (-EPROTONOSUPPORT). Damaged segments are copied forward and renamed aside
 * (DIR/damaged-seg-<id>.log). -errno with a logged reason on failure. */
int spool_open(struct ev_loop *loop, const char *dir, enum fsync_mode mode, const SpoolRecovery *cb,
               Spool **ret);
/* Flush, wait for the last fsync (completing every wait), close. A compaction in flight is
 * abandoned (nothing was deleted for it: recovery reads its copies like any others). */
void spool_close(Spool *s);

/* Append a message (queued for the broker, or kept for session m->session, which the spool
 * holds); *ret_seq names it, *ret_mark is what spool_wait needs. -errno (ENOSPC, EIO,
 * E2BIG...) when it cannot be written: nothing was added. */
int spool_add(Spool *s, const SpoolMessage *m /* its message fields */, uint64_t *ret_seq,
              uint64_t *ret_mark);
/* The broker has message `seq` (or the session acknowledged it, or dropped it), or session
 * `seq` ended: forget it (deleting segments as they empty). A DONE record that cannot be
 * written is retried at the next write. */
void spool_done(Spool *s, uint64_t seq);

/* Write a session whole: a new one when m->id is 0 (then set), else the newer state of
 * session m->id. Its acknowledgement goes in it too, so that a SESSION_ACK written before it
 * (which replay may reach before the session) is not needed after it. -ENOENT for an id the spool
 * does not hold, or a write error (the spool keeps what it had). */
int spool_session_put(Spool *s, SpoolSession *m);
/* Session `id` acknowledged every message up to `acked` (not 0). */
int spool_session_ack(Spool *s, uint64_t id, uint64_t acked);
/* Message `seq` went on the wire under `packet_id` (recorded again if the id changes, and
 * resetting pubrec). Call before the bytes are written to the broker socket. -ENOENT for a
 * message the spool does not hold, -EINVAL for id 0, or a write error. */
int spool_sent(Spool *s, uint64_t seq, uint16_t packet_id);
/* QoS 2 message `seq` got its PUBREC. -ENOENT, -EINVAL (not QoS 2, or never sent), or a
 * write error. */
int spool_pubrec(Spool *s, uint64_t seq);

/* An incoming QoS 2 message with this id was delivered locally and PUBREC sent (held=true),
 * or its PUBREL arrived (held=false). Id 0 is -EINVAL. */
int spool_incoming(Spool *s, uint16_t packet_id, bool held);
/* Forget all held ids (the broker started a new session). */
int spool_incoming_clear(Spool *s);
/* The held ids as a bitmap of 65536 bits (1024 uint64_t, id i is bit i % 64 of word i / 64),
 * owned by the spool, valid until spool_close: right after spool_open the ids held at the
 * last stop, then kept current by spool_incoming and spool_incoming_clear. */
const uint64_t *spool_incoming_held(const Spool *s);

/* Call cb(ud, error) once everything up to `mark` is durable (now, if it already is). */
void spool_wait(Spool *s, SpoolWait *w, uint64_t mark, spool_durable_cb cb, void *ud);
void spool_wait_cancel(SpoolWait *w);
/* Messages queued for the broker in the spool, and its size on disk. */
size_t spool_pending(const Spool *s);
uint64_t spool_disk_bytes(const Spool *s);
void spool_health(const Spool *s, SpoolHealth *ret);
/* Segment size at which a new segment is started (default 4 MiB); for tests. */
void spool_set_segment_max(Spool *s, uint64_t bytes);
/* Whether a compaction is in flight (its completion comes through the event loop); for tests:
 * run the loop until it is false to see its effect. */
bool spool_compacting(const Spool *s);

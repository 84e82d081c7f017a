/* SPDX-License-Identifier: MIT */
/*
 * The durable spool: see spool.h.
 *
 * Layout: DIR/lock (flock'ed while a daemon owns the spool) and DIR/seg-<16 hex>.log. Every
 * open starts a new segment, and a segment is closed at segment_max (4 MiB). Each segment
 * starts with a HEADER naming the format, the salt of its checksums and a snapshot of the
 * held incoming QoS 2 ids, so the newest segment alone gives that set back, whatever was
 * deleted before it. DIR/damaged-seg-<id>.log are segments recovery found damaged, kept for
 * inspection and never read again.
 *
 * Liveness: a segment is needed while it holds the ADD record of a pending message or the
 * latest STATE record of one (Segment.live counts both). A DONE record is needed while an ADD
 * it cancels may still lie in another segment (a pin: otherwise the acknowledged message
 * would come back at the next start). A segment with nothing live is deleted, its pinned DONE
 * records written again into the current segment first. Compaction keeps disk use
 * proportional to what is pending: see "compaction" below.
 *
 * Recovery reads every segment into memory, refuses a newer format before touching anything,
 * then replays the records in segment order. A bad record followed by good ones is damage:
 * the region is skipped and counted, the segment is copied forward and renamed aside once the
 * new segment is durable. A bad record with nothing good after it is a torn tail (a write cut
 * short): it is cut off.
 *
 * Writes: a record is written with one write(2) on the event loop thread; a failed write is
 * undone with ftruncate (if even that fails the segment is retired and a new one is started
 * at the next write), returns -errno and starts an "episode" logged once until a write works.
 *
 * Durability marks: `appended` counts bytes written since open. Sync jobs (fd, mark) go to
 * the helper thread through a fixed ring; the loop thread takes their results back, resolves
 * the waits they cover (with the fdatasync's error, if any), then runs the callbacks in mark
 * order.
 *
 * Compaction: at a rotation, old segments that are mostly dead (live bytes under a quarter), with
 * the small ones (under a quarter of segment_max: earlier outputs, segments cut short by a restart)
 * merged in, have what is live in them copied into a segment of their own, numbered between the
 * full segment N and the new current one: N+1 gets the copies, N+2 the new writes. The loop thread
 * takes a snapshot (which ADD records to copy, from where, with the send state each has now), opens
 * the files and hands the snapshot to the helper thread, which does the reads, writes and the
 * fdatasync, then posts a completion through the same ev_async as the sync jobs. Only the loop
 * thread touches the map of pending messages and the segment list: on completion it points the
 * messages that are still pending at their copies, then deletes what nothing needs any more, so an
 * original goes only once its copies are durable. Why a segment of its own: the loop goes on
 * writing to N+2 meanwhile, so anything that changes after the snapshot (a newer STATE, a DONE)
 * lands after the copies in replay order and wins, and the copies never interleave with the loop's
 * appends. A DONE written while a compaction runs is pinned up to N+1, which may hold a copy of the
 * message it cancels. One compaction at a time; a rotation while one runs does not start another.
 * spool_close abandons one in flight, as a kill would: nothing was deleted for it, and recovery
 * reads its copies like any other (a torn tail cut, a message found twice taken from the later
 * copy).
 *
 * Recovery copies the pending messages of damaged segments forward into the new current
 * segment and syncs it on the calling thread (copy_forward, sync_now): that is at start-up,
 * before the event loop runs, so nothing waits on it and it stays simple.
 */
#include "spool.h"

#include <assert.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "hashmap.h"
#include "log.h"
#include "spool/record.h"

#define SEGMENT_MAX   (4u << 20)
#define BATCH_RECORDS 256
#define BATCH_SECONDS 0.005
#define JOBS          64 /* sync jobs in flight; jobs for one fd merge, so this is plenty */
#define PATH_LEN      4200

typedef struct Pin { /* a DONE record for `seq`, whose ADD may lie in segments lo..hi */
    uint64_t seq, lo, hi;
} Pin;

typedef struct Segment {
    uint64_t id;
    uint64_t bytes, live_bytes;
    size_t live;   /* pending messages' ADD records and latest STATE records in it */
    uint32_t salt; /* 0: format 1 */
    bool damaged;  /* recovery skipped damage in it: set aside, not deleted */
    bool keep;     /* a pin could not be recorded: kept until the next start */
    Pin *pins;
    size_t n_pins, cap_pins;
    bool torn;        /* recovery found a torn tail at torn_at */
    uint64_t torn_at; /* (recovery only) */
    bool busy;        /* a compaction's output, being filled by the helper thread: kept */
} Segment;

/* The latest state record of an entry: a message's send state (STATE), or the last
 * acknowledgement of a session (SESSION_ACK). All 0: none written. */
typedef struct LiveState {
    uint16_t packet_id;
    bool pubrec;
    uint64_t acked;
} LiveState;

/* What a Live is: a message queued for the broker, one kept for a named local session, or a
 * session itself (its "ADD" its latest SESSION record, its state its latest SESSION_ACK). */
enum live_kind { LIVE_QUEUED, LIVE_KEPT, LIVE_SESSION, LIVE_KINDS };

typedef struct Live {       /* a pending message, or a session */
    uint64_t seq, seg, off; /* where its ADD (KEPT, SESSION) record is */
    uint32_t len;
    uint8_t qos;
    uint8_t kind; /* enum live_kind */
    LiveState st;
    uint64_t session;   /* LIVE_KEPT: its session's seq */
    uint64_t state_seg; /* segment of its latest state record; 0: none */
    uint64_t first_seg; /* the oldest segment that may still hold a copy of its ADD */
    bool copying;       /* in the snapshot of the compaction in flight (Spool.compact_out) */
} Live;

typedef struct Job {
    int fd;
    bool close_fd;
    uint64_t mark;
    int error; /* set by the helper thread */
} Job;

/* A segment that a compaction copies from, opened by the loop thread (so deleting it meanwhile
 * does not matter), read and closed by the helper thread. */
typedef struct CopySource {
    uint64_t id;
    int fd;
    uint32_t salt;
} CopySource;

/* One pending message in a compaction's snapshot. */
typedef struct CopyItem {
    uint64_t seq;
    int src;            /* index in Compaction.src of its ADD's segment; -1: ADD not copied */
    uint64_t add_off;   /* its ADD record in that segment */
    uint32_t add_len;   /* ... and its length */
    LiveState st;       /* its state, written after the ADD (or alone); all 0: none */
    uint64_t state_seg; /* Live.state_seg at the snapshot */
    uint64_t out_off;   /* set by the helper thread: where the ADD copy went */
} CopyItem;

enum copy_failure { COPY_OK, COPY_READ, COPY_WRITE, COPY_SYNC };

/* A compaction: built by the loop thread, then owned by the helper thread until it is handed
 * back finished (Spool.c_todo, then Spool.c_done). */
typedef struct Compaction {
    uint64_t out_id;    /* the output segment (N+1) */
    int out_fd;         /* open for appending, header written */
    uint32_t out_salt;  /* its checksum salt */
    uint64_t out_bytes; /* its size: the header, then what the helper thread appends */
    bool sync;          /* fdatasync the copies (not with fsync=never) */
    CopySource *src;
    size_t n_src;
    CopyItem *items; /* in seq order */
    size_t n_items;
    /* Written by the helper thread, read by the loop once the compaction is back: */
    size_t n_done;             /* items[0..n_done) are copied (and durable, when sync) */
    int error;                 /* -errno of the failure that ended it early */
    enum copy_failure failure; /* what failed: a read (items[n_done]), a write, the sync */
    Buf rec;                   /* the helper thread's record buffer */
} Compaction;

enum episode { EPISODE_NONE, EPISODE_WRITE, EPISODE_SYNC };

struct Spool {
    struct ev_loop *loop;
    char *dir;
    int lock_fd, fd; /* fd: the current segment; -1: start a new one at the next write */
    enum fsync_mode mode;
    uint64_t segment_max;
    Segment *segs; /* segs[n_segs - 1] is the one written */
    size_t n_segs, cap_segs;
    HashMap live; /* seq -> Live */
    size_t count[LIVE_KINDS];
    uint64_t next_seq;
    uint64_t appended;
    Buf rec;
    size_t unsynced_records;
    uint64_t held[SPOOL_HELD_WORDS]; /* incoming QoS 2 ids between PUBREC and PUBREL */
    Pin *undone;                     /* DONE records a failed write owes the log */
    size_t n_undone, cap_undone;
    SpoolHealth health;
    enum episode episode;

    uint64_t compact_out; /* the output segment of the compaction in flight; 0: none */

    SpoolWait waits;            /* list head, in mark order */
    uint64_t synced, fail_mark; /* largest mark synced; of the last failed sync */
    int fail_error;
    bool completing;
    ev_async synced_async;
    ev_timer batch;

    /* Shared with the helper thread, under mu: jobs[done..finished) have results for the loop,
     * [finished..taken) are being synced, [taken..tail) wait for the thread. c_todo is the
     * compaction the thread works on, c_done one it finished, not yet taken by the loop. */
    pthread_t thread;
    bool threaded;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    Job jobs[JOBS];
    uint64_t j_done, j_finished, j_taken, j_tail;
    Compaction *c_todo, *c_done;
    bool quit;
};

static void seg_path(const Spool *s, uint64_t id, char *out, size_t n)
{
    snprintf(out, n, "%s/seg-%016" PRIx64 ".log", s->dir, id);
}

static View seq_key(const uint64_t *seq)
{
    return VIEW(seq, sizeof(*seq));
}

static Segment *find_seg(Spool *s, uint64_t id)
{
    for (size_t i = 0; i < s->n_segs; i++) {
        if (s->segs[i].id == id) {
            return &s->segs[i];
        }
    }
    return NULL;
}

static Segment *cur_seg(Spool *s)
{
    return &s->segs[s->n_segs - 1];
}

static void seg_ref(Spool *s, uint64_t id, uint64_t bytes)
{
    Segment *sg = find_seg(s, id);
    if (sg) {
        sg->live++;
        sg->live_bytes += bytes;
    }
}

static void seg_unref(Spool *s, uint64_t id, uint64_t bytes)
{
    Segment *sg = find_seg(s, id);
    if (sg) {
        sg->live--;
        sg->live_bytes -= bytes;
    }
}

/* A message's ADD record is now at (seg, off). */
static void move_add(Spool *s, Live *l, uint64_t seg, uint64_t off, uint32_t len)
{
    seg_ref(s, seg, len);
    seg_unref(s, l->seg, l->len);
    l->seg = seg;
    l->off = off;
    l->len = len;
}

static bool has_state(LiveState st)
{
    return st.packet_id || st.acked;
}

static uint32_t state_size(LiveState st)
{
    return st.acked ? SPOOL_ACK_SIZE : SPOOL_STATE_SIZE;
}

/* An entry's latest state record is now in `seg`. */
static void move_state(Spool *s, Live *l, uint64_t seg, LiveState st)
{
    seg_ref(s, seg, state_size(st));
    if (l->state_seg) {
        seg_unref(s, l->state_seg, state_size(l->st));
    }
    l->state_seg = seg;
    l->st = st;
}

/* A new entry, its ADD record at (seg, off). */
static int add_live(Spool *s, Live *l)
{
    int r = hashmap_put(&s->live, seq_key(&l->seq), l);
    if (r == 0) {
        seg_ref(s, l->seg, l->len);
        s->count[l->kind]++;
    }
    return r;
}

static void forget(Spool *s, Live *l)
{
    seg_unref(s, l->seg, l->len);
    if (l->state_seg) {
        seg_unref(s, l->state_seg, state_size(l->st));
    }
    s->count[l->kind]--;
    free(l);
}

/* A DONE record for `p.seq` was written in `seg`. */
static void add_pin(Segment *seg, Pin p)
{
    if (p.lo == seg->id && p.hi == seg->id) {
        return; /* the ADD goes with the segment */
    }
    if (seg->n_pins == seg->cap_pins) {
        size_t cap = seg->cap_pins ? seg->cap_pins * 2 : 8;
        Pin *n = realloc(seg->pins, cap * sizeof(*n));
        if (!n) {
            seg->keep = true;
            return;
        }
        seg->pins = n;
        seg->cap_pins = cap;
    }
    seg->pins[seg->n_pins++] = p;
}

/* Whether a segment other than `holder` that may hold an ADD cancelled by `p` is still there. */
static bool pin_holds(const Spool *s, const Pin *p, uint64_t holder)
{
    for (size_t i = 0; i < s->n_segs; i++) {
        uint64_t id = s->segs[i].id;
        if (id != holder && id >= p->lo && id <= p->hi) {
            return true;
        }
    }
    return false;
}

/* ---- write-failure episodes ---- */

static int write_failed(Spool *s, int error)
{
    if (s->episode != EPISODE_WRITE) {
        log_error("spool: cannot write to %s: %s; publishes that need the spool are refused "
                  "until it can write again",
                  s->dir, strerror(-error));
        s->episode = EPISODE_WRITE;
    }
    s->health.write_error = -error;
    return error;
}

static void write_worked(Spool *s)
{
    if (s->episode == EPISODE_WRITE) {
        log_info("spool: writing to %s works again", s->dir);
        s->episode = EPISODE_NONE;
        s->health.write_error = 0;
    }
}

static void sync_failed(Spool *s, int error)
{
    if (s->episode == EPISODE_NONE) {
        log_error("spool: cannot sync %s to disk: %s; publishes waiting for it are answered "
                  "with an error meanwhile",
                  s->dir, strerror(-error));
        s->episode = EPISODE_SYNC;
    }
    if (s->episode == EPISODE_SYNC) {
        s->health.write_error = -error;
    }
}

static void sync_worked(Spool *s)
{
    if (s->episode == EPISODE_SYNC) {
        log_info("spool: syncing %s to disk works again", s->dir);
        s->episode = EPISODE_NONE;
        s->health.write_error = 0;
    }
}

/* ---- the helper thread: sync jobs and compaction copies ---- */

/* A default mutex, locked and unlocked by the thread that holds it: these cannot fail. */
static void lock(Spool *s)
{
    int r = pthread_mutex_lock(&s->mu);
    assert(r == 0);
    (void)r;
}

static void unlock(Spool *s)
{
    int r = pthread_mutex_unlock(&s->mu);
    assert(r == 0);
    (void)r;
}

static void wake(Spool *s)
{
    int r = pthread_cond_broadcast(&s->cv);
    assert(r == 0);
    (void)r;
}

static void wait_cv(Spool *s)
{
    int r = pthread_cond_wait(&s->cv, &s->mu);
    assert(r == 0);
    (void)r;
}

static int write_all(int fd, const uint8_t *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) {
            continue;
        }
        if (w < 0) {
            return -errno;
        }
        if (w == 0) {
            return -EIO;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* An entry's state record: a STATE, or a SESSION_ACK. */
static int encode_state(Buf *out, uint32_t salt, uint64_t seq, LiveState st)
{
    return st.acked ? spool_record_session_ack(out, salt, seq, st.acked)
                    : spool_record_state(out, salt, seq, st.packet_id, st.pubrec);
}

/* A record that starts an entry (and a DONE ends). */
static bool is_add_type(enum spool_record_type t)
{
    return t == SPOOL_ADD || t == SPOOL_ADD5 || t == SPOOL_KEPT || t == SPOOL_SESSION;
}

/* Read the ADD record of message `seq` (`len` bytes at `off` of `fd`, checksummed with `salt`)
 * into `out` (cleared first), checking that it still reads back, and checksum it again with
 * `new_salt`. No logging and no Spool: the helper thread calls it too. -EBADMSG when the
 * record no longer reads back. */
static int read_add(int fd, uint32_t salt, uint64_t seq, uint64_t off, uint32_t len,
                    uint32_t new_salt, Buf *out)
{
    buf_clear(out);
    int r = buf_reserve(out, len);
    if (r < 0) {
        return r;
    }
    ssize_t n = pread(fd, out->data, len, (off_t)off);
    if (n != (ssize_t)len) {
        return n < 0 ? -errno : -EIO;
    }
    SpoolRecord rec;
    if (spool_record_parse(VIEW(out->data, len), salt, &rec) != 1 || !is_add_type(rec.type) ||
        rec.seq != seq) {
        return -EBADMSG;
    }
    spool_record_reseal(out->data, len, new_salt);
    out->len = len;
    return 0;
}

/* Helper thread: append one message's copy (its ADD, then its send state) to the output. */
static int copy_item(Compaction *c, CopyItem *it)
{
    int r = 0;
    buf_clear(&c->rec);
    if (it->src >= 0) {
        const CopySource *src = &c->src[it->src];
        if ((r = read_add(src->fd, src->salt, it->seq, it->add_off, it->add_len, c->out_salt,
                          &c->rec)) < 0) {
            c->failure = COPY_READ;
            return r;
        }
    }
    if (has_state(it->st)) {
        r = encode_state(&c->rec, c->out_salt, it->seq, it->st);
    }
    if (r < 0 || (r = write_all(c->out_fd, c->rec.data, c->rec.len)) < 0) {
        c->failure = COPY_WRITE;
        return r;
    }
    it->out_off = c->out_bytes;
    c->out_bytes += c->rec.len;
    return 0;
}

/* Helper thread: make the copies durable and close the files. The copies are kept only if
 * that works; after a failed write (which may have left part of a record) or sync, the whole
 * output is given up (the loop deletes it). */
static void end_compaction(Compaction *c)
{
    if (c->failure == COPY_WRITE) {
        c->n_done = 0;
    }
    int r = 0;
    if (c->n_done && c->sync && fdatasync(c->out_fd) < 0) {
        r = -errno;
    }
    if (close(c->out_fd) < 0 && r == 0) {
        r = -errno; /* a write error reported late: as bad as a failed sync */
    }
    c->out_fd = -1;
    if (r < 0 && c->n_done) {
        c->error = r;
        c->failure = COPY_SYNC;
        c->n_done = 0;
    }
    for (size_t i = 0; i < c->n_src; i++) {
        (void)close(c->src[i].fd); /* read only: nothing to lose */
        c->src[i].fd = -1;
    }
}

/* Helper thread: copy the next message, or end the compaction (all copied, or stopped by a
 * failure). One message per step, so sync jobs are not held up behind a long compaction.
 * True when it is finished. */
static bool compaction_step(Compaction *c)
{
    if (c->n_done < c->n_items && c->error == 0) {
        int r = copy_item(c, &c->items[c->n_done]);
        if (r < 0) {
            c->error = r; /* items[n_done] is the one that failed */
        } else {
            c->n_done++;
        }
        return false;
    }
    end_compaction(c);
    return true;
}

/* Helper thread, called and returning with mu held: fdatasync the jobs waiting, and post their
 * results. */
static void run_sync_jobs(Spool *s)
{
    Job batch[JOBS];
    uint64_t from = s->j_taken, to = s->j_tail;
    for (uint64_t i = from; i < to; i++) {
        batch[i - from] = s->jobs[i % JOBS];
    }
    s->j_taken = to;
    unlock(s);
    for (size_t k = 0; k < to - from; k++) {
        Job *j = &batch[k];
        j->error = fdatasync(j->fd) < 0 ? -errno : 0;
        if (j->close_fd && close(j->fd) < 0 && !j->error) {
            j->error = -errno;
        }
    }
    lock(s);
    for (uint64_t i = from; i < to; i++) {
        s->jobs[i % JOBS].error = batch[i - from].error;
    }
    s->j_finished = to;
    wake(s);
    ev_async_send(s->loop, &s->synced_async);
}

/* The helper thread: sync jobs first (answers wait for them), a compaction step when there
 * are none. At quit, the jobs still queued are done; a compaction is abandoned. */
static void *helper_thread(void *arg)
{
    Spool *s = arg;
    lock(s);
    for (;;) {
        while (s->j_taken == s->j_tail && !s->c_todo && !s->quit) {
            wait_cv(s);
        }
        if (s->j_taken < s->j_tail) {
            run_sync_jobs(s);
            continue;
        }
        if (s->quit) {
            break;
        }
        Compaction *c = s->c_todo;
        unlock(s);
        bool finished = compaction_step(c);
        lock(s);
        if (finished) {
            s->c_todo = NULL;
            s->c_done = c;
            ev_async_send(s->loop, &s->synced_async);
        }
    }
    unlock(s);
    return NULL;
}

/* Waits up to `mark` are settled, with `error`; their callbacks come from complete_waits. */
static void resolve(Spool *s, uint64_t mark, int error)
{
    for (SpoolWait *w = s->waits.next; w != &s->waits && w->mark <= mark; w = w->next) {
        if (!w->resolved) {
            w->resolved = true;
            w->error = error;
        }
    }
    if (mark > s->synced) {
        s->synced = mark;
    }
    if (error) {
        s->fail_mark = mark;
        s->fail_error = error;
        sync_failed(s, error);
    } else {
        sync_worked(s);
    }
}

/* Take the results of finished sync jobs back (no callbacks: safe anywhere). */
static void take_results(Spool *s)
{
    if (!s->threaded) {
        return;
    }
    Job done[JOBS];
    size_t n = 0;
    lock(s);
    for (; s->j_done < s->j_finished; s->j_done++) {
        done[n++] = s->jobs[s->j_done % JOBS];
    }
    wake(s);
    unlock(s);
    for (size_t i = 0; i < n; i++) {
        resolve(s, done[i].mark, done[i].error);
    }
}

static void push_job(Spool *s, int fd, bool close_fd)
{
    s->unsynced_records = 0;
    ev_timer_stop(s->loop, &s->batch);
    if (!s->threaded || s->mode == FSYNC_NEVER) {
        if (close_fd && close(fd) < 0) {
            log_warning("spool: closing a segment of %s: %s", s->dir, strerror(errno));
        }
        return;
    }
    lock(s);
    Job *last = s->j_tail > s->j_taken ? &s->jobs[(s->j_tail - 1) % JOBS] : NULL;
    if (last && last->fd == fd && !last->close_fd) {
        last->mark = s->appended; /* not taken yet: one fdatasync covers both */
        last->close_fd = close_fd;
    } else {
        /* Full: 64 fds waiting for their sync. Wait for the disk: nothing else can go on. */
        while (s->j_tail - s->j_done == JOBS) {
            if (s->j_finished > s->j_done) {
                unlock(s);
                take_results(s);
                lock(s);
            } else {
                wait_cv(s);
            }
        }
        s->jobs[s->j_tail++ % JOBS] = (Job){fd, close_fd, s->appended, 0};
    }
    wake(s);
    unlock(s);
}

static void complete_waits(Spool *s)
{
    take_results(s);
    if (s->completing) {
        return; /* a callback called back in: the loop below goes on */
    }
    s->completing = true;
    while (s->waits.next != &s->waits && s->waits.next->resolved) {
        SpoolWait *w = s->waits.next;
        spool_wait_cancel(w);
        w->cb(w->ud, w->error);
    }
    s->completing = false;
}

static void finish_compaction(Spool *s);

/* The helper thread posted results: sync jobs, or a compaction. */
static void on_synced(struct ev_loop *loop, ev_async *w, int revents)
{
    (void)loop;
    (void)revents;
    Spool *s = (Spool *)((char *)w - offsetof(Spool, synced_async));
    complete_waits(s);
    finish_compaction(s);
}

static void on_batch(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    Spool *s = (Spool *)((char *)w - offsetof(Spool, batch));
    if (s->fd >= 0) {
        push_job(s, s->fd, false);
    }
}

/* After a record: sync per the fsync policy. */
static void schedule_sync(Spool *s)
{
    if (s->mode == FSYNC_ALWAYS ||
        (s->mode == FSYNC_BATCH && ++s->unsynced_records >= BATCH_RECORDS)) {
        push_job(s, s->fd, false);
    } else if (s->mode == FSYNC_BATCH && !ev_is_active(&s->batch)) {
        ev_timer_set(&s->batch, BATCH_SECONDS, 0.0);
        ev_timer_start(s->loop, &s->batch);
    }
}

/* fdatasync of the current segment on this thread: recovery only (before the loop runs). */
static int sync_now(Spool *s)
{
    if (s->mode == FSYNC_NEVER || s->fd < 0) {
        return 0;
    }
    if (fdatasync(s->fd) < 0) {
        int e = -errno;
        sync_failed(s, e);
        return e;
    }
    return 0;
}

/* ---- writing ---- */

static uint32_t new_salt(uint64_t id)
{
    uint32_t v;
    if (getrandom(&v, sizeof(v), GRND_NONBLOCK) != (ssize_t)sizeof(v)) {
        struct timespec ts;
        (void)clock_gettime(CLOCK_MONOTONIC, &ts); /* CLOCK_MONOTONIC is always there */
        v = (uint32_t)ts.tv_nsec ^ (uint32_t)ts.tv_sec << 20 ^ (uint32_t)getpid() ^
            (uint32_t)id * 2654435761u;
    }
    return v ? v : 1;
}

/* The current segment's fd is not to be written again: synced (if need be) and closed. */
static void retire_fd(Spool *s)
{
    int fd = s->fd;
    s->fd = -1;
    if (fd >= 0) {
        push_job(s, fd, true);
    }
}

/* Room for one more entry in s->segs. */
static int reserve_seg(Spool *s)
{
    if (s->n_segs < s->cap_segs) {
        return 0;
    }
    size_t cap = s->cap_segs ? s->cap_segs * 2 : 8;
    Segment *n = realloc(s->segs, cap * sizeof(*n));
    if (!n) {
        return -ENOMEM;
    }
    s->segs = n;
    s->cap_segs = cap;
    return 0;
}

/* Create the file of segment `id` (the id after the last in s->segs) with its header, and
 * add it to s->segs: its fd, open for appending, in *ret_fd. */
static int create_segment(Spool *s, int *ret_fd)
{
    uint64_t id = s->n_segs ? s->segs[s->n_segs - 1].id + 1 : 1;
    int r = reserve_seg(s);
    if (r < 0) {
        return r;
    }
    char path[PATH_LEN];
    seg_path(s, id, path, sizeof(path));
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_APPEND | O_CLOEXEC, 0600);
    if (fd < 0) {
        return -errno;
    }
    uint32_t salt = new_salt(id);
    buf_clear(&s->rec);
    r = spool_record_header(&s->rec, salt, s->held);
    if (r == 0) {
        r = write_all(fd, s->rec.data, s->rec.len);
    }
    if (r < 0) {
        (void)close(fd); /* the file goes */
        if (unlink(path) < 0) {
            log_warning("spool: cannot delete %s: %s", path, strerror(errno));
        }
        return r;
    }
    s->segs[s->n_segs++] = (Segment){.id = id, .bytes = s->rec.len, .salt = salt};
    *ret_fd = fd;
    return 0;
}

/* Start a new current segment with its header. The old one is synced, then closed, by the
 * helper thread. */
static int open_segment(Spool *s)
{
    int fd;
    int r = create_segment(s, &fd);
    if (r < 0) {
        return r;
    }
    retire_fd(s);
    s->fd = fd;
    s->appended += cur_seg(s)->bytes;
    return 0;
}

/* Append the record in s->rec to the current segment. A failed write leaves the segment as
 * it was (or, when it cannot be cut back, retired). */
static int append(Spool *s, uint64_t *ret_off)
{
    if (s->fd < 0) {
        return -EBADF;
    }
    Segment *cur = cur_seg(s);
    int r = write_all(s->fd, s->rec.data, s->rec.len);
    if (r < 0) {
        if (ftruncate(s->fd, (off_t)cur->bytes) < 0) {
            char path[PATH_LEN];
            seg_path(s, cur->id, path, sizeof(path));
            log_error("spool: cannot cut %s back to %" PRIu64 " bytes after a failed write (%s); "
                      "the next write starts a new segment",
                      path, cur->bytes, strerror(errno));
            retire_fd(s);
        }
        return write_failed(s, r);
    }
    write_worked(s);
    *ret_off = cur->bytes;
    cur->bytes += s->rec.len;
    s->appended += s->rec.len;
    return 0;
}

/* Write state `st` of `l` into the current segment. */
static int put_state(Spool *s, Live *l, LiveState st)
{
    buf_clear(&s->rec);
    uint64_t off;
    int r = encode_state(&s->rec, cur_seg(s)->salt, l->seq, st);
    if (r < 0 || (r = append(s, &off)) < 0) {
        return r;
    }
    move_state(s, l, cur_seg(s)->id, st);
    return 0;
}

static void log_unreadable(uint64_t seq, uint64_t seg)
{
    log_error("spool: message %" PRIu64 " no longer reads back from segment %" PRIx64
              " (damaged since it was written?); left where it is",
              seq, seg);
}

/* ---- copying forward at recovery (on the calling thread, before the loop runs) ---- */

/* Copy a pending message's ADD record from `fd` (its segment, checksummed with `salt`) into
 * the current segment, checking that it still reads back. */
static int copy_add(Spool *s, int fd, uint32_t salt, Live *l)
{
    int r = read_add(fd, salt, l->seq, l->off, l->len, cur_seg(s)->salt, &s->rec);
    if (r == -EBADMSG) {
        log_unreadable(l->seq, l->seg);
    }
    uint64_t off;
    if (r < 0 || (r = append(s, &off)) < 0) {
        return r;
    }
    move_add(s, l, cur_seg(s)->id, off, l->len);
    return 0;
}

/* The pending messages with something in segment `id` (collected first: copying changes the
 * map). */
static int collect(Spool *s, uint64_t id, Live ***ret, size_t *ret_n)
{
    Live **mine = NULL;
    size_t n = 0;
    HashIter it;
    void *v;
    hashmap_iter(&s->live, &it);
    while (hashmap_iter_next(&it, &v)) {
        Live *l = v;
        if (l->seg != id && l->state_seg != id) {
            continue;
        }
        Live **m = realloc(mine, (n + 1) * sizeof(*m));
        if (!m) {
            free(mine);
            return -ENOMEM;
        }
        mine = m;
        mine[n++] = l;
    }
    *ret = mine;
    *ret_n = n;
    return 0;
}

/* Copy what is live in segment `id` into the current one: ADD records, each followed by its
 * send state, and the latest STATE records of messages whose ADD is elsewhere. */
static int copy_forward(Spool *s, uint64_t id)
{
    Segment *seg = find_seg(s, id);
    char path[PATH_LEN];
    seg_path(s, id, path, sizeof(path));
    uint32_t salt = seg->salt;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = -errno;
        log_error("spool: cannot read %s: %s", path, strerror(-e));
        return e;
    }
    Live **mine = NULL;
    size_t n = 0;
    int r = collect(s, id, &mine, &n);
    for (size_t k = 0; r == 0 && k < n; k++) {
        Live *l = mine[k];
        bool add_here = l->seg == id;
        if (add_here) {
            r = copy_add(s, fd, salt, l);
        }
        if (r == 0 && has_state(l->st) && (add_here || l->state_seg == id)) {
            r = put_state(s, l, l->st);
        }
    }
    free(mine);
    (void)close(fd); /* read only */
    return r;
}

static int set_aside(Spool *s, const Segment *seg)
{
    char from[PATH_LEN], to[PATH_LEN + 16];
    seg_path(s, seg->id, from, sizeof(from));
    for (int n = 0; n < 1000; n++) {
        if (n) {
            snprintf(to, sizeof(to), "%s/damaged-seg-%016" PRIx64 ".%d.log", s->dir, seg->id, n);
        } else {
            snprintf(to, sizeof(to), "%s/damaged-seg-%016" PRIx64 ".log", s->dir, seg->id);
        }
        if (access(to, F_OK) < 0 && errno == ENOENT) {
            break;
        }
    }
    if (rename(from, to) < 0) {
        int e = -errno;
        log_error("spool: cannot rename %s to %s: %s", from, to, strerror(-e));
        return e;
    }
    log_warning("spool: %s had damage: its readable pending messages were copied forward, and "
                "the file is kept as %s for inspection",
                from, to);
    return 0;
}

/* Before segment i goes: the DONE records in it that are still needed are written again
 * into the current segment. Not synced, like any DONE. */
static int carry_pins(Spool *s, size_t i)
{
    for (size_t k = 0; k < s->segs[i].n_pins; k++) {
        Pin p = s->segs[i].pins[k];
        if (!pin_holds(s, &p, s->segs[i].id)) {
            continue;
        }
        buf_clear(&s->rec);
        uint64_t off;
        int r = spool_record_done(&s->rec, cur_seg(s)->salt, p.seq);
        if (r < 0 || (r = append(s, &off)) < 0) {
            return r;
        }
        add_pin(cur_seg(s), p);
    }
    return 0;
}

/* Delete (or, when damaged, set aside) every old segment nothing needs. */
static void sweep(Spool *s)
{
    for (size_t i = 0; i + 1 < s->n_segs;) {
        const Segment *g = &s->segs[i];
        if (g->live || g->keep || g->busy || carry_pins(s, i) < 0) {
            i++; /* still needed, or its DONE records cannot be carried now: kept */
            continue;
        }
        Segment *seg = &s->segs[i];
        if (seg->damaged) {
            (void)set_aside(s, seg); /* logged; if it stays, the next start finds it again */
        } else {
            char path[PATH_LEN];
            seg_path(s, seg->id, path, sizeof(path));
            if (unlink(path) < 0) {
                log_warning("spool: cannot delete %s: %s", path, strerror(errno));
            }
        }
        free(seg->pins);
        memmove(seg, seg + 1, (s->n_segs - i - 1) * sizeof(*seg));
        s->n_segs--;
    }
}

/* ---- compaction (see the top of the file) ---- */

/* Holding something live, and not a compaction's output being filled. */
static bool may_compact(const Segment *seg)
{
    return seg->live && !seg->busy;
}

static bool mostly_dead(const Segment *seg)
{
    return seg->live_bytes * 4 < seg->bytes;
}

/* An earlier compaction's output, or a segment started just before a stop: merged with the
 * others copied, so that small files do not pile up when some messages stay pending long. */
static bool small(const Spool *s, const Segment *seg)
{
    return seg->bytes * 4 < s->segment_max;
}

static int src_index(const Compaction *c, uint64_t id)
{
    for (size_t i = 0; i < c->n_src; i++) {
        if (c->src[i].id == id) {
            return (int)i;
        }
    }
    return -1;
}

static void free_compaction(Compaction *c)
{
    if (!c) {
        return;
    }
    if (c->out_fd >= 0) {
        (void)close(c->out_fd); /* given up: nothing in it is counted on */
    }
    for (size_t i = 0; i < c->n_src; i++) {
        if (c->src[i].fd >= 0) {
            (void)close(c->src[i].fd); /* read only */
        }
    }
    free(c->src);
    free(c->items);
    buf_free(&c->rec);
    free(c);
}

/* Open the segments to copy from: the mostly dead and the small ones, the full current one
 * included. One that cannot be opened is left out (and where it is). */
static int open_sources(Spool *s, Compaction *c)
{
    if (!(c->src = calloc(s->n_segs, sizeof(*c->src)))) {
        return -ENOMEM;
    }
    for (size_t i = 0; i < s->n_segs; i++) {
        const Segment *seg = &s->segs[i];
        if (!may_compact(seg) || !(mostly_dead(seg) || small(s, seg))) {
            continue;
        }
        char path[PATH_LEN];
        seg_path(s, seg->id, path, sizeof(path));
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            log_error("spool: cannot read %s: %s", path, strerror(errno));
            continue;
        }
        c->src[c->n_src++] = (CopySource){seg->id, fd, seg->salt};
    }
    return 0;
}

static int cmp_item(const void *a, const void *b)
{
    uint64_t x = ((const CopyItem *)a)->seq, y = ((const CopyItem *)b)->seq;
    return x < y ? -1 : x > y;
}

/* The snapshot: every pending message whose ADD or latest STATE lies in a source, with the
 * send state it has now (a copied ADD is followed by its state, as recovery expects). */
static int snapshot(Spool *s, Compaction *c)
{
    size_t cap = 0;
    HashIter it;
    void *v;
    hashmap_iter(&s->live, &it);
    while (hashmap_iter_next(&it, &v)) {
        Live *l = v;
        int src = src_index(c, l->seg);
        if (src < 0 && !(l->state_seg && src_index(c, l->state_seg) >= 0)) {
            continue;
        }
        assert((l->state_seg != 0) == has_state(l->st)); /* state records are never all 0 */
        if (c->n_items == cap) {
            cap = cap ? cap * 2 : 64;
            CopyItem *n = realloc(c->items, cap * sizeof(*n));
            if (!n) {
                return -ENOMEM;
            }
            c->items = n;
        }
        c->items[c->n_items++] = (CopyItem){.seq = l->seq,
                                            .src = src,
                                            .add_off = src >= 0 ? l->off : 0,
                                            .add_len = src >= 0 ? l->len : 0,
                                            .st = l->st,
                                            .state_seg = l->state_seg};
    }
    if (c->n_items) {
        qsort(c->items, c->n_items, sizeof(*c->items), cmp_item);
    }
    return 0;
}

/* Forget the output segment of a compaction that left nothing in it. */
static void drop_output(Spool *s, uint64_t id)
{
    Segment *seg = find_seg(s, id);
    assert(seg && seg->live == 0 && seg->n_pins == 0);
    char path[PATH_LEN];
    seg_path(s, id, path, sizeof(path));
    if (unlink(path) < 0) {
        log_warning("spool: cannot delete %s: %s", path, strerror(errno));
    }
    free(seg->pins);
    memmove(seg, seg + 1, (size_t)(s->segs + s->n_segs - seg - 1) * sizeof(*seg));
    s->n_segs--;
}

/* At a rotation, before the new current segment is opened: snapshot what is live in the
 * segments worth compacting (a mostly dead one, or two small ones at least) and create the
 * output segment (the id after the full one). NULL when there is nothing to do, a compaction
 * is in flight, or it cannot start now: the next rotation tries again. */
static Compaction *begin_compaction(Spool *s)
{
    size_t dead = 0, n_small = 0;
    for (size_t i = 0; i < s->n_segs; i++) {
        const Segment *seg = &s->segs[i];
        if (may_compact(seg)) {
            dead += mostly_dead(seg);
            n_small += !mostly_dead(seg) && small(s, seg);
        }
    }
    if ((dead == 0 && n_small < 2) || !s->threaded || s->quit || s->compact_out) {
        return NULL; /* s->quit: closing (a wait's callback wrote); only this thread sets it */
    }
    Compaction *c = calloc(1, sizeof(*c));
    if (!c) {
        return NULL;
    }
    c->out_fd = -1;
    c->sync = s->mode != FSYNC_NEVER;
    int r = open_sources(s, c);
    if (r == 0) {
        r = snapshot(s, c);
    }
    if (r == 0 && c->n_items && (r = create_segment(s, &c->out_fd)) < 0 && r != -ENOMEM) {
        (void)write_failed(s, r); /* as any write: logged once per episode */
    }
    if (r < 0 || c->n_items == 0) {
        free_compaction(c);
        return NULL;
    }
    Segment *out = cur_seg(s);
    out->busy = true;
    c->out_id = out->id;
    c->out_salt = out->salt;
    c->out_bytes = out->bytes;
    return c;
}

/* The new current segment is open: the copying goes to the helper thread. */
static void queue_compaction(Spool *s, Compaction *c)
{
    for (size_t i = 0; i < c->n_items; i++) {
        Live *l = hashmap_get(&s->live, seq_key(&c->items[i].seq));
        assert(l && !l->copying);
        l->copying = true;
    }
    s->compact_out = c->out_id;
    lock(s);
    assert(!s->c_todo && !s->c_done);
    s->c_todo = c;
    wake(s);
    unlock(s);
}

/* Log why a compaction stopped early. */
static void report_compaction(Spool *s, const Compaction *c)
{
    switch (c->failure) {
    case COPY_OK:
        break;
    case COPY_READ: {
        assert(c->n_done < c->n_items && c->items[c->n_done].src >= 0);
        const CopyItem *it = &c->items[c->n_done];
        uint64_t from = c->src[it->src].id;
        if (c->error == -EBADMSG) {
            log_unreadable(it->seq, from);
        } else {
            char path[PATH_LEN];
            seg_path(s, from, path, sizeof(path));
            log_error("spool: cannot read %s: %s", path, strerror(-c->error));
        }
        break;
    }
    case COPY_WRITE:
        (void)write_failed(s, c->error); /* logged once per episode */
        break;
    case COPY_SYNC:
        sync_failed(s, c->error);
        break;
    }
}

/* A copy is durable: the message, if still pending, is read from it from now on. What changed
 * since the snapshot was written after the copy (in a later segment), so it stays as it is. */
static void apply_copy(Spool *s, const Compaction *c, const CopyItem *it)
{
    Live *l = hashmap_get(&s->live, seq_key(&it->seq));
    if (!l) {
        return; /* acknowledged meanwhile: its DONE, pinned up to c->out_id, cancels the copy */
    }
    bool moved = it->src >= 0 && (l->seg != c->src[it->src].id || l->off != it->add_off);
    /* Only a compaction moves an ADD (one runs at a time), and a session's newer SESSION
     * record, written after the snapshot (so after the copy, which it replaces). */
    assert(!moved || (l->kind == LIVE_SESSION && l->seg > c->out_id));
    if (it->src >= 0 && !moved) {
        assert(l->len == it->add_len);
        move_add(s, l, c->out_id, it->out_off, it->add_len);
    }
    if (has_state(it->st) && l->state_seg == it->state_seg) {
        assert(!memcmp(&l->st, &it->st, sizeof(l->st)));
        move_state(s, l, c->out_id, it->st);
    }
}

/* Loop thread: take a finished compaction back, point the messages at their durable copies
 * (or give the output up), then delete what nothing needs any more. */
static void finish_compaction(Spool *s)
{
    lock(s);
    Compaction *c = s->c_done;
    s->c_done = NULL;
    unlock(s);
    if (!c) {
        return;
    }
    assert(c->out_id == s->compact_out);
    report_compaction(s, c);
    Segment *out = find_seg(s, c->out_id);
    assert(out && out->busy && out->live == 0);
    out->busy = false;
    out->bytes = c->out_bytes;
    for (size_t i = 0; i < c->n_items; i++) {
        Live *l = hashmap_get(&s->live, seq_key(&c->items[i].seq));
        if (l) {
            l->copying = false;
        }
        if (i < c->n_done) {
            apply_copy(s, c, &c->items[i]);
        }
    }
    if (c->n_done == 0) {
        drop_output(s, c->out_id);
    }
    s->compact_out = 0;
    free_compaction(c);
    sweep(s);
}

/* Ready to append: a new segment when the current one is full (then compaction) or retired;
 * DONE records owed by earlier failures first. */
static int writable(Spool *s, bool rotate)
{
    bool full = rotate && cur_seg(s)->bytes >= s->segment_max;
    if (s->fd < 0 || full) {
        Compaction *c = full ? begin_compaction(s) : NULL;
        int r = open_segment(s);
        if (r < 0) {
            if (c) {
                uint64_t out = c->out_id;
                free_compaction(c);
                drop_output(s, out);
            }
            return r == -ENOMEM ? r : write_failed(s, r);
        }
        if (c) {
            queue_compaction(s, c);
        }
        if (full) {
            sweep(s);
        }
    }
    while (s->n_undone) {
        buf_clear(&s->rec);
        uint64_t off;
        Pin p = s->undone[s->n_undone - 1];
        if (spool_record_done(&s->rec, cur_seg(s)->salt, p.seq) < 0 || append(s, &off) < 0) {
            break;
        }
        add_pin(cur_seg(s), p);
        s->n_undone--;
    }
    return 0;
}

/* Append the record in s->rec as the ADD of a new entry `l` (seq, kind, qos set), or as the
 * newer SESSION record of the session `l` already is. A new `l` is freed on failure. */
static int append_entry(Spool *s, Live *l, bool is_new)
{
    int r = is_new ? hashmap_put(&s->live, seq_key(&l->seq), l) : 0;
    uint64_t off;
    if (r == 0 && (r = append(s, &off)) < 0 && is_new) {
        (void)hashmap_remove(&s->live, seq_key(&l->seq)); /* l, put there just above */
    }
    if (r < 0) {
        if (is_new) {
            free(l);
        }
        return r;
    }
    if (is_new) {
        l->seg = l->first_seg = cur_seg(s)->id;
        l->off = off;
        l->len = (uint32_t)s->rec.len;
        seg_ref(s, l->seg, l->len);
        s->count[l->kind]++;
        s->next_seq++;
    } else {
        move_add(s, l, cur_seg(s)->id, off, (uint32_t)s->rec.len);
    }
    schedule_sync(s);
    return 0;
}

int spool_add(Spool *s, const SpoolMessage *m, uint64_t *ret_seq, uint64_t *ret_mark)
{
    int r = writable(s, true);
    if (r < 0) {
        return r;
    }
    Live *l = calloc(1, sizeof(*l));
    if (!l) {
        return -ENOMEM;
    }
    *l = (Live){.seq = s->next_seq,
                .qos = m->qos,
                .kind = m->session ? LIVE_KEPT : LIVE_QUEUED,
                .session = m->session};
    assert(!m->session || hashmap_get(&s->live, seq_key(&m->session)));
    buf_clear(&s->rec);
    if (m->session) {
        SpoolRecord k = {.session = m->session,
                         .session_seq = m->session_seq,
                         .kept_at = m->kept_at,
                         .qos = m->qos,
                         .retain = m->retain,
                         .base64 = m->base64,
                         .topic = m->topic,
                         .payload = m->payload,
                         .props = m->props};
        r = spool_record_kept(&s->rec, cur_seg(s)->salt, l->seq, &k);
    } else {
        r = spool_record_add(&s->rec, cur_seg(s)->salt, l->seq, m->qos, m->retain, m->topic,
                             m->payload, m->props, m->expires_at);
    }
    if (r < 0) {
        free(l);
        return r;
    }
    if ((r = append_entry(s, l, true)) < 0) {
        return r;
    }
    *ret_seq = l->seq;
    *ret_mark = s->appended;
    return 0;
}

int spool_session_put(Spool *s, SpoolSession *m)
{
    Live *l = m->id ? hashmap_get(&s->live, seq_key(&m->id)) : NULL;
    if (m->id && (!l || l->kind != LIVE_SESSION)) {
        return -ENOENT;
    }
    int r = writable(s, true);
    if (r < 0) {
        return r;
    }
    if (!l && !(l = calloc(1, sizeof(*l)))) {
        return -ENOMEM;
    }
    bool is_new = !m->id;
    if (is_new) {
        *l = (Live){.seq = s->next_seq, .kind = LIVE_SESSION};
    }
    SpoolSession rec = *m;
    rec.id = l->seq;
    buf_clear(&s->rec);
    if ((r = spool_record_session(&s->rec, cur_seg(s)->salt, &rec)) < 0) {
        if (is_new) {
            free(l);
        }
        return r;
    }
    if ((r = append_entry(s, l, is_new)) == 0) {
        m->id = rec.id;
        sweep(s); /* the older SESSION record may have been all its segment held */
    }
    return r;
}

static void owe_done(Spool *s, Pin p)
{
    if (s->n_undone == s->cap_undone) {
        size_t cap = s->cap_undone ? s->cap_undone * 2 : 16;
        Pin *n = realloc(s->undone, cap * sizeof(*n));
        if (!n) {
            return; /* the message may come back after a restart: at least once */
        }
        s->undone = n;
        s->cap_undone = cap;
    }
    s->undone[s->n_undone++] = p;
}

void spool_done(Spool *s, uint64_t seq)
{
    Live *l = hashmap_remove(&s->live, seq_key(&seq));
    if (!l) {
        return;
    }
    /* Not synced: if lost, the message is sent again (at least once). A compaction in flight
     * may be copying its ADD into compact_out: pinned up to there (or further: a session's
     * newer SESSION record may be later still). */
    uint64_t hi = l->copying && s->compact_out > l->seg ? s->compact_out : l->seg;
    Pin p = {seq, l->first_seg, hi};
    int r = writable(s, false);
    if (r == 0) {
        buf_clear(&s->rec);
        uint64_t off;
        if ((r = spool_record_done(&s->rec, cur_seg(s)->salt, seq)) == 0) {
            r = append(s, &off);
        }
    }
    if (r == 0) {
        add_pin(cur_seg(s), p);
    } else {
        owe_done(s, p);
    }
    forget(s, l);
    sweep(s);
}

static int write_state(Spool *s, Live *l, LiveState st)
{
    int r = writable(s, false);
    if (r < 0 || (r = put_state(s, l, st)) < 0) {
        return r;
    }
    schedule_sync(s);
    sweep(s);
    return 0;
}

int spool_sent(Spool *s, uint64_t seq, uint16_t packet_id)
{
    Live *l = hashmap_get(&s->live, seq_key(&seq));
    if (!l || l->kind != LIVE_QUEUED) {
        return -ENOENT;
    }
    if (!packet_id) {
        return -EINVAL;
    }
    if (l->st.packet_id == packet_id && !l->st.pubrec) {
        return 0;
    }
    return write_state(s, l, (LiveState){.packet_id = packet_id});
}

int spool_pubrec(Spool *s, uint64_t seq)
{
    Live *l = hashmap_get(&s->live, seq_key(&seq));
    if (!l || l->kind != LIVE_QUEUED) {
        return -ENOENT;
    }
    if (l->qos != 2 || !l->st.packet_id) {
        return -EINVAL;
    }
    return l->st.pubrec
               ? 0
               : write_state(s, l, (LiveState){.packet_id = l->st.packet_id, .pubrec = true});
}

int spool_session_ack(Spool *s, uint64_t id, uint64_t acked)
{
    Live *l = hashmap_get(&s->live, seq_key(&id));
    if (!l || l->kind != LIVE_SESSION) {
        return -ENOENT;
    }
    if (!acked) {
        return -EINVAL;
    }
    return l->st.acked == acked ? 0 : write_state(s, l, (LiveState){.acked = acked});
}

int spool_incoming(Spool *s, uint16_t packet_id, bool held)
{
    if (!packet_id) {
        return -EINVAL;
    }
    uint64_t bit = 1ull << (packet_id % 64), *word = &s->held[packet_id / 64];
    if (!!(*word & bit) == held) {
        return 0;
    }
    int r = writable(s, false);
    if (r < 0) {
        return r;
    }
    buf_clear(&s->rec);
    uint64_t off;
    if ((r = spool_record_incoming(&s->rec, cur_seg(s)->salt, packet_id, held)) < 0 ||
        (r = append(s, &off)) < 0) {
        return r;
    }
    *word = held ? *word | bit : *word & ~bit;
    schedule_sync(s);
    return 0;
}

int spool_incoming_clear(Spool *s)
{
    bool any = false;
    for (size_t i = 0; i < SPOOL_HELD_WORDS && !any; i++) {
        any = s->held[i] != 0;
    }
    if (!any) {
        return 0;
    }
    int r = writable(s, false);
    if (r < 0) {
        return r;
    }
    buf_clear(&s->rec);
    uint64_t off;
    if ((r = spool_record_incoming_clear(&s->rec, cur_seg(s)->salt)) < 0 ||
        (r = append(s, &off)) < 0) {
        return r;
    }
    memset(s->held, 0, sizeof(s->held));
    schedule_sync(s);
    return 0;
}

const uint64_t *spool_incoming_held(const Spool *s)
{
    return s->held;
}

void spool_wait(Spool *s, SpoolWait *w, uint64_t mark, spool_durable_cb cb, void *ud)
{
    w->mark = mark;
    w->cb = cb;
    w->ud = ud;
    w->error = 0;
    w->resolved = false;
    if (s->mode == FSYNC_NEVER) {
        w->prev = w->next = w;
        cb(ud, 0);
        return;
    }
    w->prev = s->waits.prev;
    w->next = &s->waits;
    s->waits.prev->next = w;
    s->waits.prev = w;
    if (mark <= s->synced) {
        w->resolved = true;
        w->error = mark <= s->fail_mark ? s->fail_error : 0;
    }
    complete_waits(s);
}

void spool_wait_cancel(SpoolWait *w)
{
    if (w->next && w->next != w) {
        w->prev->next = w->next;
        w->next->prev = w->prev;
    }
    w->prev = w->next = w;
}

size_t spool_pending(const Spool *s)
{
    return s->count[LIVE_QUEUED];
}

uint64_t spool_disk_bytes(const Spool *s)
{
    uint64_t n = 0;
    for (size_t i = 0; i < s->n_segs; i++) {
        n += s->segs[i].bytes;
    }
    return n;
}

void spool_health(const Spool *s, SpoolHealth *ret)
{
    *ret = s->health;
}

void spool_set_segment_max(Spool *s, uint64_t bytes)
{
    s->segment_max = bytes;
}

bool spool_compacting(const Spool *s)
{
    return s->compact_out != 0;
}

/* ---- recovery ---- */

static int cmp_live(const void *a, const void *b)
{
    uint64_t x = (*(Live *const *)a)->seq, y = (*(Live *const *)b)->seq;
    return x < y ? -1 : x > y;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static int read_file(const char *path, Buf *out)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return -errno;
    }
    struct stat st;
    int r = fstat(fd, &st) < 0 ? -errno : buf_reserve(out, (size_t)st.st_size + 1);
    while (r == 0) {
        ssize_t n = read(fd, out->data + out->len, out->cap - out->len);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            r = n < 0 ? -errno : 0;
            break;
        }
        out->len += (size_t)n;
        if (out->len == out->cap) {
            r = buf_reserve(out, 65536);
        }
    }
    (void)close(fd); /* read only */
    return r;
}

/* The ids of DIR/seg-<16 hex>.log, ascending. */
static int list_segments(const char *dir, uint64_t **ret_ids, size_t *ret_n)
{
    DIR *d = opendir(dir);
    if (!d) {
        return -errno;
    }
    uint64_t *ids = NULL;
    size_t n = 0;
    int r = 0;
    struct dirent *de;
    while (r == 0 && (de = readdir(d))) {
        const char *name = de->d_name;
        if (strlen(name) != 24 || strncmp(name, "seg-", 4) || strcmp(name + 20, ".log") ||
            strspn(name + 4, "0123456789abcdef") != 16) {
            continue;
        }
        uint64_t *m = realloc(ids, (n + 1) * sizeof(*m));
        if (!m) {
            r = -ENOMEM;
            break;
        }
        ids = m;
        ids[n++] = strtoull(name + 4, NULL, 16);
    }
    (void)closedir(d); /* read only */
    if (r < 0) {
        free(ids);
        return r;
    }
    if (n) {
        qsort(ids, n, sizeof(*ids), cmp_u64);
    }
    *ret_ids = ids;
    *ret_n = n;
    return 0;
}

static enum live_kind kind_of(enum spool_record_type t)
{
    return t == SPOOL_SESSION ? LIVE_SESSION : t == SPOOL_KEPT ? LIVE_KEPT : LIVE_QUEUED;
}

/* An ADD (KEPT, SESSION) record read back: a new entry, or one copied forward (its state
 * stays), or a session's newer SESSION record. */
static int recover_add(Spool *s, uint64_t seg, const SpoolRecord *rec, size_t off)
{
    Live *l = hashmap_get(&s->live, seq_key(&rec->seq));
    if (l) {
        if (l->kind == kind_of(rec->type)) { /* else damage made a record of another kind */
            move_add(s, l, seg, off, (uint32_t)rec->size);
        }
        return 0;
    }
    if (!(l = calloc(1, sizeof(*l)))) {
        return -ENOMEM;
    }
    *l = (Live){.seq = rec->seq,
                .seg = seg,
                .off = off,
                .len = (uint32_t)rec->size,
                .qos = rec->qos,
                .kind = kind_of(rec->type),
                .session = rec->session,
                .first_seg = seg};
    int r = add_live(s, l);
    if (r < 0) {
        free(l);
    }
    return r;
}

static bool is_add(const SpoolRecord *rec)
{
    return is_add_type(rec->type);
}

static int apply(Spool *s, uint64_t seg, const SpoolRecord *rec, size_t off)
{
    Live *l;
    if (rec->seq >= s->next_seq) {
        s->next_seq = rec->seq + 1; /* never reuse a number a record still names */
    }
    switch (rec->type) {
    case SPOOL_HEADER:
        spool_record_held(rec, s->held); /* the set when this segment was started */
        break;
    case SPOOL_ADD:
    case SPOOL_ADD5:
    case SPOOL_KEPT:
    case SPOOL_SESSION:
        return recover_add(s, seg, rec, off);
    case SPOOL_SESSION_ACK:
        if ((l = hashmap_get(&s->live, seq_key(&rec->seq))) && l->kind == LIVE_SESSION) {
            move_state(s, l, seg, (LiveState){.acked = rec->sess.acked});
        }
        break;
    case SPOOL_DONE:
        if ((l = hashmap_remove(&s->live, seq_key(&rec->seq)))) {
            add_pin(find_seg(s, seg), (Pin){rec->seq, l->first_seg, l->seg});
            forget(s, l);
        }
        break;
    case SPOOL_STATE:
        if ((l = hashmap_get(&s->live, seq_key(&rec->seq))) && l->kind == LIVE_QUEUED) {
            move_state(s, l, seg, (LiveState){.packet_id = rec->packet_id, .pubrec = rec->pubrec});
        }
        break;
    case SPOOL_INCOMING:
        if (rec->held) {
            s->held[rec->packet_id / 64] |= 1ull << (rec->packet_id % 64);
        } else {
            s->held[rec->packet_id / 64] &= ~(1ull << (rec->packet_id % 64));
        }
        break;
    case SPOOL_INCOMING_CLEAR:
        memset(s->held, 0, sizeof(s->held));
        break;
    }
    return 0;
}

/* Log a damaged region, with the ADD records missing around it (best effort: a region can
 * also hold DONE or STATE records, which leave no gap). */
static void report_damage(Spool *s, const char *path, const SpoolReader *rd, size_t off, size_t len,
                          uint64_t top_add)
{
    SpoolReader peek = *rd;
    SpoolRecord rec;
    size_t o, n;
    int k;
    uint64_t next_add = 0;
    while (!next_add && (k = spool_reader_next(&peek, &rec, &o, &n)) != SPOOL_READ_END) {
        if (k == SPOOL_READ_RECORD && is_add(&rec) && rec.seq > top_add) {
            next_add = rec.seq;
        }
    }
    s->health.damaged_regions++;
    s->health.damaged_bytes += len;
    uint64_t lost = top_add && next_add > top_add + 1 ? next_add - top_add - 1 : 0;
    if (lost == 1) {
        log_error("spool: %s: damaged region at offset %zu (%zu bytes) skipped: at least 1 "
                  "record lost (message seq %" PRIu64 "); the records after it are kept",
                  path, off, len, top_add + 1);
    } else if (lost) {
        log_error("spool: %s: damaged region at offset %zu (%zu bytes) skipped: at least %" PRIu64
                  " records lost (messages seq %" PRIu64 " to %" PRIu64
                  "); the records after it are kept",
                  path, off, len, lost, top_add + 1, next_add - 1);
    } else {
        log_error("spool: %s: damaged region at offset %zu (%zu bytes) skipped: at least 1 "
                  "record lost; the records after it are kept",
                  path, off, len);
    }
}

/* Replay one segment's records. */
static int scan_segment(Spool *s, size_t i, View data, const char *path)
{
    SpoolReader rd;
    if (spool_reader_init(&rd, data) < 0) {
        return -EPROTONOSUPPORT; /* checked before */
    }
    SpoolRecord rec;
    size_t off, len;
    int k;
    uint64_t top_add = 0;
    while ((k = spool_reader_next(&rd, &rec, &off, &len)) != SPOOL_READ_END) {
        Segment *seg = &s->segs[i];
        if (k == SPOOL_READ_RECORD) {
            int r = apply(s, seg->id, &rec, off);
            if (r < 0) {
                return r;
            }
            if (is_add(&rec) && rec.seq > top_add) {
                top_add = rec.seq;
            }
        } else if (k == SPOOL_READ_DAMAGED || (off == 0 && rd.version >= 2)) {
            /* A format 2 segment whose header is unreadable is set aside, never truncated. */
            report_damage(s, path, &rd, off, len, top_add);
            seg->damaged = true;
        } else {
            seg->torn = true;
            seg->torn_at = off;
            s->health.torn_bytes += len;
        }
    }
    s->segs[i].salt = rd.salt;
    return 0;
}

/* Two messages under one packet id: an id is reused only after the broker acknowledged the
 * message that had it, so the older one is done (its DONE was lost). all[] in seq order. */
static bool *find_superseded(Live *const *all, size_t n)
{
    uint64_t newer[65536 / 64] = {0};
    bool *superseded = calloc(n ? n : 1, sizeof(*superseded));
    for (size_t i = n; superseded && i-- > 0;) {
        uint16_t id = all[i]->st.packet_id;
        if (id && (newer[id / 64] >> (id % 64) & 1)) {
            superseded[i] = true;
        }
        newer[id / 64] |= UINT64_C(1) << (id % 64);
    }
    return superseded;
}

/* Hand one entry back, read from its ADD record. */
static void hand_back_one(const Spool *s, const Buf *files, const Live *l, bool superseded,
                          const SpoolRecovery *cb)
{
    const Segment *seg = NULL;
    for (size_t i = 0; i < s->n_segs && !seg; i++) {
        seg = s->segs[i].id == l->seg ? &s->segs[i] : NULL;
    }
    SpoolRecord rec;
    assert(seg);
    if (spool_record_parse(VIEW(files[seg - s->segs].data + l->off, l->len), seg->salt, &rec) !=
        1) {
        return; /* read back once already: cannot happen */
    }
    if (l->kind == LIVE_SESSION) {
        if (l->st.acked > rec.sess.acked) {
            rec.sess.acked = l->st.acked; /* a SESSION_ACK after the SESSION record */
        }
        if (cb->session) {
            cb->session(cb->ud, &rec.sess);
        }
        return;
    }
    SpoolMessage m = {.seq = l->seq,
                      .qos = rec.qos,
                      .retain = rec.retain,
                      .topic = rec.topic,
                      .payload = rec.payload,
                      .props = rec.props,
                      .expires_at = rec.expires_at,
                      .packet_id = l->st.packet_id,
                      .pubrec = l->st.pubrec,
                      .superseded = superseded,
                      .session = rec.session,
                      .session_seq = rec.session_seq,
                      .kept_at = rec.kept_at,
                      .base64 = rec.base64};
    cb->message(cb->ud, &m);
}

/* Hand the sessions and pending messages back in their original order (a session before its
 * kept messages: it was made first). */
static int hand_back(Spool *s, const Buf *files, const SpoolRecovery *cb)
{
    size_t n = 0;
    Live **all = calloc(s->live.count ? s->live.count : 1, sizeof(*all));
    if (!all) {
        return -ENOMEM;
    }
    HashIter it;
    void *v;
    hashmap_iter(&s->live, &it);
    while (hashmap_iter_next(&it, &v)) {
        all[n++] = v;
    }
    if (n) {
        qsort(all, n, sizeof(*all), cmp_live);
    }
    bool *superseded = find_superseded(all, n);
    if (!superseded) {
        free(all);
        return -ENOMEM;
    }
    for (size_t i = 0; i < n; i++) {
        hand_back_one(s, files, all[i], superseded[i], cb);
    }
    free(superseded);
    free(all);
    return 0;
}

/* Cut off the torn tails found (not in damaged segments: those are set aside whole). */
static void cut_torn_tails(Spool *s)
{
    for (size_t i = 0; i < s->n_segs; i++) {
        Segment *seg = &s->segs[i];
        if (!seg->torn || seg->damaged) {
            continue;
        }
        char path[PATH_LEN];
        seg_path(s, seg->id, path, sizeof(path));
        log_warning("spool: %s: dropped a torn tail of %" PRIu64 " bytes at offset %" PRIu64
                    " (a write cut short: nothing valid follows); the records before it are "
                    "kept",
                    path, seg->bytes - seg->torn_at, seg->torn_at);
        if (truncate(path, (off_t)seg->torn_at) < 0) {
            log_warning("spool: cannot truncate %s: %s", path, strerror(errno));
        }
        seg->bytes = seg->torn_at;
    }
}

/* Read every segment into memory and refuse a newer format before anything else. */
static int load(Spool *s, const uint64_t *ids, size_t n, Buf *files)
{
    for (size_t i = 0; i < n; i++) {
        char path[PATH_LEN];
        seg_path(s, ids[i], path, sizeof(path));
        int r = read_file(path, &files[i]);
        if (r < 0) {
            log_error("spool: cannot read %s: %s", path, strerror(-r));
            return r;
        }
        SpoolReader rd;
        if (spool_reader_init(&rd, buf_view(&files[i])) < 0) {
            log_error("spool: %s was written by a newer mqttbridged (spool format %" PRIu32
                      "); this version reads formats 1 to %d: refusing to start rather than "
                      "misread it",
                      path, rd.version, SPOOL_FORMAT);
            return -EPROTONOSUPPORT;
        }
    }
    return 0;
}

static int recover(Spool *s, const SpoolRecovery *cb)
{
    uint64_t *ids = NULL;
    size_t n_ids = 0;
    int r = list_segments(s->dir, &ids, &n_ids);
    if (r < 0) {
        log_error("spool: cannot list %s: %s", s->dir, strerror(-r));
        return r;
    }
    Buf *files = calloc(n_ids ? n_ids : 1, sizeof(*files));
    Segment *segs = calloc(n_ids ? n_ids : 1, sizeof(*segs));
    r = files && segs ? load(s, ids, n_ids, files) : -ENOMEM;
    if (r == 0) {
        s->segs = segs;
        s->cap_segs = n_ids ? n_ids : 1;
        s->n_segs = n_ids;
        segs = NULL;
    }
    for (size_t i = 0; r == 0 && i < n_ids; i++) {
        s->segs[i] = (Segment){.id = ids[i], .bytes = files[i].len};
        char path[PATH_LEN];
        seg_path(s, ids[i], path, sizeof(path));
        r = scan_segment(s, i, buf_view(&files[i]), path);
    }
    if (r == 0) {
        r = hand_back(s, files, cb);
    }
    if (r == 0) {
        cut_torn_tails(s);
    }
    for (size_t i = 0; files && i < n_ids; i++) {
        buf_free(&files[i]);
    }
    free(files);
    free(segs);
    free(ids);
    return r;
}

/* After recovery: the new segment (holding the incoming id set) and copies of what damaged
 * segments held are made durable, then old segments nothing needs go. */
static void settle(Spool *s)
{
    for (size_t i = 0; i + 1 < s->n_segs; i++) {
        Segment *seg = &s->segs[i];
        if (seg->damaged && seg->live) {
            if (copy_forward(s, seg->id) < 0) {
                break; /* read again (and found damaged again) at the next start */
            }
        }
    }
    if (sync_now(s) < 0) {
        return;
    }
    sweep(s);
}

static void free_spool(Spool *s)
{
    if (s->lock_fd >= 0) {
        (void)close(s->lock_fd); /* releases the lock; nothing written */
    }
    hashmap_free(&s->live, free);
    (void)pthread_mutex_destroy(&s->mu); /* unlocked, no waiter: cannot fail */
    (void)pthread_cond_destroy(&s->cv);
    buf_free(&s->rec);
    free(s->undone);
    for (size_t i = 0; s->segs && i < s->n_segs; i++) {
        free(s->segs[i].pins);
    }
    free(s->segs);
    free(s->dir);
    free(s);
}

static int lock_dir(Spool *s)
{
    if (mkdir(s->dir, 0700) < 0 && errno != EEXIST) {
        int e = -errno;
        log_error("spool: cannot create %s: %s", s->dir, strerror(-e));
        return e;
    }
    char path[PATH_LEN];
    snprintf(path, sizeof(path), "%s/lock", s->dir);
    s->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (s->lock_fd < 0 || flock(s->lock_fd, LOCK_EX | LOCK_NB) < 0) {
        log_error("spool: %s is in use by another process (%s)", s->dir, strerror(errno));
        return -EBUSY;
    }
    return 0;
}

int spool_open(struct ev_loop *loop, const char *dir, enum fsync_mode mode, const SpoolRecovery *cb,
               Spool **ret)
{
    Spool *s = calloc(1, sizeof(*s));
    if (!s || !(s->dir = strdup(dir))) {
        free(s);
        return -ENOMEM;
    }
    int r = -pthread_mutex_init(&s->mu, NULL);
    if (r == 0 && (r = -pthread_cond_init(&s->cv, NULL)) < 0) {
        (void)pthread_mutex_destroy(&s->mu); /* unused: cannot fail */
    }
    if (r < 0) {
        free(s->dir);
        free(s);
        return r;
    }
    s->loop = loop;
    s->mode = mode;
    s->fd = s->lock_fd = -1;
    s->segment_max = SEGMENT_MAX;
    s->next_seq = 1;
    s->waits.prev = s->waits.next = &s->waits;
    hashmap_init(&s->live);
    ev_async_init(&s->synced_async, on_synced);
    ev_timer_init(&s->batch, on_batch, BATCH_SECONDS, 0.0);
    r = lock_dir(s);
    if (r == 0) {
        r = recover(s, cb);
    }
    if (r == 0 && (r = open_segment(s)) < 0) {
        char path[PATH_LEN];
        seg_path(s, s->n_segs ? s->segs[s->n_segs - 1].id + 1 : 1, path, sizeof(path));
        log_error("spool: cannot start %s: %s", path, strerror(-r));
    }
    if (r < 0) {
        free_spool(s);
        return r;
    }
    settle(s);
    ev_async_start(loop, &s->synced_async);
    /* With fsync=never too: compaction reads and writes on it. */
    if ((r = -pthread_create(&s->thread, NULL, helper_thread, s)) < 0) {
        log_error("spool: cannot start the spool's helper thread: %s", strerror(-r));
        spool_close(s);
        return r;
    }
    s->threaded = true;
    *ret = s;
    return 0;
}

void spool_close(Spool *s)
{
    if (!s) {
        return;
    }
    if (s->threaded) {
        if (s->fd >= 0) {
            push_job(s, s->fd, false);
        }
        lock(s);
        s->quit = true;
        wake(s);
        unlock(s);
        int r = pthread_join(s->thread, NULL);
        assert(r == 0); /* joinable, joined once */
        (void)r;
        complete_waits(s);
        s->threaded = false;
        /* A compaction in flight, or finished and not taken yet, is abandoned as a kill
         * would: nothing was deleted for it, its copies are read at the next start. */
        free_compaction(s->c_todo);
        free_compaction(s->c_done);
        s->c_todo = s->c_done = NULL;
    } else if (s->fd >= 0 && s->mode != FSYNC_NEVER && fdatasync(s->fd) < 0) {
        log_error("spool: cannot sync %s to disk: %s", s->dir, strerror(errno));
    }
    /* Waits nothing covered (none, unless a callback added one while closing): detached. */
    while (s->waits.next != &s->waits) {
        spool_wait_cancel(s->waits.next);
    }
    ev_async_stop(s->loop, &s->synced_async);
    ev_timer_stop(s->loop, &s->batch);
    if (s->fd >= 0) {
        (void)close(s->fd); /* synced above (unless fsync=never): nothing left to report */
    }
    free_spool(s);
}

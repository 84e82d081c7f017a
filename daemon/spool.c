/* SPDX-License-Identifier: MIT */
/*
 * The durable spool: see spool.h.
 *
 * Layout: DIR/lock (flock'ed while a daemon owns the spool) and DIR/seg-<16 hex>.log. Every
 * open starts a new segment; a segment is closed at SEGMENT_MAX. A segment whose messages are
 * all acknowledged is deleted; at each rotation, old segments that are mostly dead have their
 * few pending messages copied forward (and made durable) before being deleted, so disk use
 * stays proportional to what is pending.
 *
 * Durability marks: `appended` counts bytes written since open; the sync thread publishes
 * `synced`, the largest mark known to be on disk. Waits complete in mark order.
 */
#include "spool.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "hashmap.h"
#include "log.h"
#include "spool/record.h"

#define SEGMENT_MAX   (4u << 20)
#define BATCH_RECORDS 256
#define BATCH_SECONDS 0.005

typedef struct Segment {
    uint64_t id;
    uint64_t bytes, live_bytes;
    size_t live;
} Segment;

typedef struct Live { /* where a pending message's ADD record is */
    uint64_t seq, seg, off;
    uint32_t len;
} Live;

typedef struct Job {
    int fd;
    bool close_fd;
    uint64_t mark;
} Job;

struct Spool {
    struct ev_loop *loop;
    char *dir;
    int lock_fd, fd;
    enum fsync_mode mode;
    Segment *segs; /* segs[n_segs - 1] is the one written */
    size_t n_segs, cap_segs;
    HashMap live; /* seq -> Live */
    uint64_t next_seq;
    uint64_t appended, requested;
    Buf rec;
    size_t unsynced_records;
    SpoolWait waits; /* list head */
    ev_async synced_async;
    ev_timer batch;

    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    Job *jobs;
    size_t n_jobs, cap_jobs;
    uint64_t synced;
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

/* ---- the sync thread ---- */

static void *sync_thread(void *arg)
{
    Spool *s = arg;
    pthread_mutex_lock(&s->mu);
    for (;;) {
        while (!s->n_jobs && !s->quit) {
            pthread_cond_wait(&s->cv, &s->mu);
        }
        if (!s->n_jobs && s->quit) {
            break;
        }
        Job *jobs = s->jobs;
        size_t n = s->n_jobs;
        s->jobs = NULL;
        s->n_jobs = s->cap_jobs = 0;
        pthread_mutex_unlock(&s->mu);
        uint64_t mark = 0;
        for (size_t i = 0; i < n; i++) {
            if (jobs[i].fd >= 0 && fdatasync(jobs[i].fd) < 0) {
                log_error("spool: fdatasync: %s", strerror(errno));
            }
            if (jobs[i].close_fd) {
                close(jobs[i].fd);
            }
            mark = jobs[i].mark > mark ? jobs[i].mark : mark;
        }
        free(jobs);
        pthread_mutex_lock(&s->mu);
        if (mark > s->synced) {
            s->synced = mark;
        }
        ev_async_send(s->loop, &s->synced_async);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

static void push_job(Spool *s, int fd, bool close_fd)
{
    pthread_mutex_lock(&s->mu);
    if (s->n_jobs == s->cap_jobs) {
        size_t cap = s->cap_jobs ? s->cap_jobs * 2 : 8;
        Job *j = realloc(s->jobs, cap * sizeof(*j));
        if (!j) {
            pthread_mutex_unlock(&s->mu);
            fdatasync(fd); /* out of memory: do it here rather than not at all */
            if (close_fd) {
                close(fd);
            }
            return;
        }
        s->jobs = j;
        s->cap_jobs = cap;
    }
    s->jobs[s->n_jobs++] = (Job){fd, close_fd, s->appended};
    s->requested = s->appended;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
    s->unsynced_records = 0;
    ev_timer_stop(s->loop, &s->batch);
}

static void complete_waits(Spool *s)
{
    pthread_mutex_lock(&s->mu);
    uint64_t synced = s->synced;
    pthread_mutex_unlock(&s->mu);
    while (s->waits.next != &s->waits && s->waits.next->mark <= synced) {
        SpoolWait *w = s->waits.next;
        spool_wait_cancel(w);
        w->cb(w->ud);
    }
}

static void on_synced(struct ev_loop *loop, ev_async *w, int revents)
{
    (void)loop;
    (void)revents;
    complete_waits((Spool *)((char *)w - offsetof(Spool, synced_async)));
}

static void on_batch(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    Spool *s = (Spool *)((char *)w - offsetof(Spool, batch));
    push_job(s, s->fd, false);
}

/* ---- writing ---- */

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
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static int open_segment(Spool *s)
{
    uint64_t id = s->n_segs ? s->segs[s->n_segs - 1].id + 1 : 1;
    if (s->n_segs == s->cap_segs) {
        size_t cap = s->cap_segs ? s->cap_segs * 2 : 8;
        Segment *n = realloc(s->segs, cap * sizeof(*n));
        if (!n) {
            return -ENOMEM;
        }
        s->segs = n;
        s->cap_segs = cap;
    }
    char path[4200];
    seg_path(s, id, path, sizeof(path));
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_APPEND | O_CLOEXEC, 0600);
    if (fd < 0) {
        int e = errno;
        log_error("spool: cannot create %s: %s", path, strerror(e));
        return -e;
    }
    if (s->fd >= 0) {
        if (s->mode == FSYNC_NEVER) {
            close(s->fd);
        } else {
            push_job(s, s->fd, true); /* synced, then closed, by the thread */
        }
    }
    s->fd = fd;
    s->segs[s->n_segs++] = (Segment){.id = id};
    return 0;
}

static void delete_segment(Spool *s, Segment *seg)
{
    char path[4200];
    seg_path(s, seg->id, path, sizeof(path));
    if (unlink(path) < 0) {
        log_warning("spool: cannot delete %s: %s", path, strerror(errno));
    }
    size_t i = (size_t)(seg - s->segs);
    memmove(seg, seg + 1, (s->n_segs - i - 1) * sizeof(*seg));
    s->n_segs--;
}

/* Append the record in s->rec to the current segment. */
static int append(Spool *s, uint64_t *ret_off)
{
    Segment *cur = &s->segs[s->n_segs - 1];
    int r = write_all(s->fd, s->rec.data, s->rec.len);
    if (r < 0) {
        log_error("spool: write to segment %" PRIx64 ": %s", cur->id, strerror(-r));
        return r;
    }
    *ret_off = cur->bytes;
    cur->bytes += s->rec.len;
    s->appended += s->rec.len;
    return 0;
}

static void track(Spool *s, uint64_t seq, uint64_t seg, uint64_t off, uint32_t len)
{
    Live *l = malloc(sizeof(*l));
    if (!l) {
        return; /* not deleted until the next start: safe, just bigger */
    }
    *l = (Live){seq, seg, off, len};
    Live *old = hashmap_get(&s->live, seq_key(&l->seq));
    if (old) {
        Segment *os = find_seg(s, old->seg);
        if (os) {
            os->live--;
            os->live_bytes -= old->len;
        }
        free(old);
    }
    hashmap_put(&s->live, seq_key(&l->seq), l);
    Segment *sg = find_seg(s, seg);
    sg->live++;
    sg->live_bytes += len;
}

/* Copy the pending messages of mostly-dead old segments forward, then delete them. */
static void compact(Spool *s)
{
    bool copied = false;
    for (size_t i = 0; i + 1 < s->n_segs; i++) {
        Segment *seg = &s->segs[i];
        if (seg->live == 0 || seg->live_bytes * 4 >= seg->bytes) {
            continue;
        }
        char path[4200];
        seg_path(s, seg->id, path, sizeof(path));
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            continue;
        }
        uint64_t id = seg->id;
        bool ok = true;
        /* This segment's pending records (collected first: copying changes the map). */
        Live **mine = NULL;
        size_t n = 0;
        HashIter it;
        void *v;
        hashmap_iter(&s->live, &it);
        while (ok && hashmap_iter_next(&it, &v)) {
            Live *l = v;
            if (l->seg != id) {
                continue;
            }
            Live **m = realloc(mine, (n + 1) * sizeof(*m));
            ok = m != NULL;
            if (ok) {
                mine = m;
                mine[n++] = l;
            }
        }
        for (size_t k = 0; ok && k < n; k++) {
            buf_clear(&s->rec);
            ok = buf_reserve(&s->rec, mine[k]->len) == 0 &&
                 pread(fd, s->rec.data, mine[k]->len, (off_t)mine[k]->off) == mine[k]->len;
            if (ok) {
                s->rec.len = mine[k]->len;
                uint64_t off;
                ok = append(s, &off) == 0;
                if (ok) {
                    track(s, mine[k]->seq, s->segs[s->n_segs - 1].id, off, mine[k]->len);
                }
            }
        }
        free(mine);
        close(fd);
        copied |= ok;
    }
    if (copied && s->mode != FSYNC_NEVER) {
        fdatasync(s->fd); /* the copies are durable before the originals go */
    }
    for (size_t i = 0; i + 1 < s->n_segs;) {
        if (s->segs[i].live == 0) {
            delete_segment(s, &s->segs[i]);
        } else {
            i++;
        }
    }
}

int spool_add(Spool *s, uint8_t qos, bool retain, View topic, View payload, uint64_t *ret_seq,
              uint64_t *ret_mark)
{
    if (s->segs[s->n_segs - 1].bytes >= SEGMENT_MAX) {
        int r = open_segment(s);
        if (r < 0) {
            return r;
        }
        compact(s);
    }
    uint64_t seq = s->next_seq++;
    buf_clear(&s->rec);
    int r = spool_record_add(&s->rec, seq, qos, retain, topic, payload);
    uint64_t off;
    if (r < 0 || (r = append(s, &off)) < 0) {
        return r;
    }
    track(s, seq, s->segs[s->n_segs - 1].id, off, (uint32_t)s->rec.len);
    *ret_seq = seq;
    *ret_mark = s->appended;
    if (s->mode == FSYNC_ALWAYS ||
        (s->mode == FSYNC_BATCH && ++s->unsynced_records >= BATCH_RECORDS)) {
        push_job(s, s->fd, false);
    } else if (s->mode == FSYNC_BATCH && !ev_is_active(&s->batch)) {
        ev_timer_set(&s->batch, BATCH_SECONDS, 0.0);
        ev_timer_start(s->loop, &s->batch);
    }
    return 0;
}

void spool_done(Spool *s, uint64_t seq)
{
    Live *l = hashmap_remove(&s->live, seq_key(&seq));
    if (!l) {
        return;
    }
    Segment *seg = find_seg(s, l->seg);
    if (seg) {
        seg->live--;
        seg->live_bytes -= l->len;
    }
    free(l);
    buf_clear(&s->rec);
    uint64_t off;
    if (spool_record_done(&s->rec, seq) == 0) {
        append(s, &off); /* not synced: if lost, the message is sent again (at least once) */
    }
    if (seg && seg->live == 0 && seg != &s->segs[s->n_segs - 1]) {
        delete_segment(s, seg);
    }
}

void spool_wait(Spool *s, SpoolWait *w, uint64_t mark, spool_durable_cb cb, void *ud)
{
    w->mark = mark;
    w->cb = cb;
    w->ud = ud;
    if (s->mode == FSYNC_NEVER) {
        w->prev = w->next = w;
        cb(ud);
        return;
    }
    w->prev = s->waits.prev;
    w->next = &s->waits;
    s->waits.prev->next = w;
    s->waits.prev = w;
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
    return s->live.count;
}

uint64_t spool_disk_bytes(const Spool *s)
{
    uint64_t n = 0;
    for (size_t i = 0; i < s->n_segs; i++) {
        n += s->segs[i].bytes;
    }
    return n;
}

/* ---- recovery ---- */

typedef struct Found {
    uint64_t seq;
    SpoolRecord rec;
} Found;

static int cmp_found(const void *a, const void *b)
{
    uint64_t x = ((const Found *)a)->seq, y = ((const Found *)b)->seq;
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
    close(fd);
    return r;
}

static int recover(Spool *s, spool_recovered_cb each, void *ud)
{
    DIR *dir = opendir(s->dir);
    if (!dir) {
        return -errno;
    }
    uint64_t *ids = NULL;
    size_t n_ids = 0;
    struct dirent *de;
    while ((de = readdir(dir))) {
        uint64_t id;
        char tail;
        if (sscanf(de->d_name, "seg-%16" SCNx64 ".lo%c", &id, &tail) == 2 && tail == 'g') {
            uint64_t *n = realloc(ids, (n_ids + 1) * sizeof(*n));
            if (!n) {
                break;
            }
            ids = n;
            ids[n_ids++] = id;
        }
    }
    closedir(dir);
    if (n_ids) {
        qsort(ids, n_ids, sizeof(*ids), cmp_u64);
    }

    Buf *files = calloc(n_ids ? n_ids : 1, sizeof(*files));
    int r = files ? 0 : -ENOMEM;
    for (size_t i = 0; r == 0 && i < n_ids; i++) {
        char path[4200];
        seg_path(s, ids[i], path, sizeof(path));
        if ((r = read_file(path, &files[i])) < 0) {
            log_error("spool: cannot read %s: %s", path, strerror(-r));
            break;
        }
        if (s->n_segs == s->cap_segs) {
            size_t cap = s->cap_segs ? s->cap_segs * 2 : 8;
            Segment *sg = realloc(s->segs, cap * sizeof(*sg));
            if (!sg) {
                r = -ENOMEM;
                break;
            }
            s->segs = sg;
            s->cap_segs = cap;
        }
        s->segs[s->n_segs++] = (Segment){.id = ids[i], .bytes = files[i].len};
        View rest = buf_view(&files[i]);
        size_t off = 0;
        SpoolRecord rec;
        int p;
        while ((p = spool_record_parse(VIEW(rest.p + off, rest.n - off), &rec)) == 1) {
            if (rec.type == SPOOL_ADD) {
                track(s, rec.seq, ids[i], off, (uint32_t)rec.size);
            } else {
                Live *l = hashmap_remove(&s->live, seq_key(&rec.seq));
                if (l) {
                    Segment *sg = find_seg(s, l->seg);
                    sg->live--;
                    sg->live_bytes -= l->len;
                    free(l);
                }
            }
            if (rec.seq >= s->next_seq) {
                s->next_seq = rec.seq + 1;
            }
            off += rec.size;
        }
        if (off < rest.n) {
            log_warning("spool: %s: dropped a torn tail of %zu bytes (%s); %zu bytes of good "
                        "records kept",
                        path, rest.n - off, p == 0 ? "incomplete record" : "bad checksum", off);
            if (truncate(path, (off_t)off) < 0) {
                log_warning("spool: cannot truncate %s: %s", path, strerror(errno));
            }
            s->segs[s->n_segs - 1].bytes = off;
        }
    }
    /* Hand the pending messages back in their original order. */
    size_t n = s->live.count, k = 0;
    Found *found = r == 0 ? calloc(n ? n : 1, sizeof(*found)) : NULL;
    if (r == 0 && !found) {
        r = -ENOMEM;
    }
    HashIter it;
    void *v;
    hashmap_iter(&s->live, &it);
    while (r == 0 && hashmap_iter_next(&it, &v)) {
        Live *l = v;
        size_t fi = 0;
        while (ids[fi] != l->seg) {
            fi++;
        }
        spool_record_parse(VIEW(files[fi].data + l->off, l->len), &found[k].rec);
        found[k++].seq = l->seq;
    }
    if (r == 0) {
        if (k) {
            qsort(found, k, sizeof(*found), cmp_found);
        }
        for (size_t i = 0; i < k; i++) {
            each(ud, found[i].seq, found[i].rec.qos, found[i].rec.retain, found[i].rec.topic,
                 found[i].rec.payload);
        }
    }
    free(found);
    for (size_t i = 0; files && i < n_ids; i++) {
        buf_free(&files[i]);
    }
    free(files);
    free(ids);
    /* Segments with nothing pending are not needed any more. */
    for (size_t i = 0; r == 0 && i < s->n_segs;) {
        if (s->segs[i].live == 0) {
            delete_segment(s, &s->segs[i]);
        } else {
            i++;
        }
    }
    return r;
}

int spool_open(struct ev_loop *loop, const char *dir, enum fsync_mode mode, spool_recovered_cb each,
               void *ud, Spool **ret)
{
    if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
        int e = errno;
        log_error("spool: cannot create %s: %s", dir, strerror(e));
        return -e;
    }
    Spool *s = calloc(1, sizeof(*s));
    if (!s || !(s->dir = strdup(dir))) {
        free(s);
        return -ENOMEM;
    }
    s->loop = loop;
    s->mode = mode;
    s->fd = -1;
    s->next_seq = 1;
    s->waits.prev = s->waits.next = &s->waits;
    hashmap_init(&s->live);
    char path[4200];
    snprintf(path, sizeof(path), "%s/lock", dir);
    s->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (s->lock_fd < 0 || flock(s->lock_fd, LOCK_EX | LOCK_NB) < 0) {
        int e = errno;
        log_error("spool: %s is in use by another process (%s)", dir, strerror(e));
        if (s->lock_fd >= 0) {
            close(s->lock_fd);
        }
        hashmap_free(&s->live, free);
        free(s->dir);
        free(s);
        return -EBUSY;
    }
    int r = recover(s, each, ud);
    if (r == 0) {
        r = open_segment(s);
    }
    if (r < 0) {
        s->mode = FSYNC_NEVER; /* no thread yet */
        spool_close(s);
        return r;
    }
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    ev_async_init(&s->synced_async, on_synced);
    ev_async_start(loop, &s->synced_async);
    ev_timer_init(&s->batch, on_batch, BATCH_SECONDS, 0.0);
    if (mode != FSYNC_NEVER && (r = -pthread_create(&s->thread, NULL, sync_thread, s)) < 0) {
        log_error("spool: cannot start the fsync thread: %s", strerror(-r));
        s->thread = 0;
        spool_close(s);
        return r;
    }
    *ret = s;
    return 0;
}

void spool_close(Spool *s)
{
    if (!s) {
        return;
    }
    if (s->thread) {
        push_job(s, s->fd, false);
        pthread_mutex_lock(&s->mu);
        s->quit = true;
        pthread_cond_signal(&s->cv);
        pthread_mutex_unlock(&s->mu);
        pthread_join(s->thread, NULL);
        complete_waits(s);
        pthread_mutex_destroy(&s->mu);
        pthread_cond_destroy(&s->cv);
    } else if (s->fd >= 0 && s->mode != FSYNC_NEVER) {
        fdatasync(s->fd);
    }
    ev_async_stop(s->loop, &s->synced_async);
    ev_timer_stop(s->loop, &s->batch);
    if (s->fd >= 0) {
        close(s->fd);
    }
    if (s->lock_fd >= 0) {
        close(s->lock_fd);
    }
    hashmap_free(&s->live, free);
    buf_free(&s->rec);
    free(s->jobs);
    free(s->segs);
    free(s->dir);
    free(s);
}

/* SPDX-License-Identifier: MIT */
/*
 * Unit tests of the spool: the record format and segment reader (lib/spool/record.c), and
 * daemon/spool.c on real files: the committed format 1 fixture, a newer format refused, send
 * state and incoming ids across restarts and compaction, damage, torn tails, write and sync
 * failures (injected through the linker's --wrap, and a real ENOSPC on a tiny tmpfs), and
 * compaction on the helper thread: beside writes, and stopped part way as by a kill -9.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"
#include "spool.h"
#include "spool/record.h"
#include "testutil.h"

/* ---- fault injection (the test links spool.c with -Wl,--wrap=...) ---- */

int __real_fdatasync(int fd);
int __wrap_fdatasync(int fd);
ssize_t __real_write(int fd, const void *p, size_t n);
ssize_t __wrap_write(int fd, const void *p, size_t n);
/* ftruncate is ftruncate64 with _FILE_OFFSET_BITS=64 (as meson builds) */
int __real_ftruncate64(int fd, off_t len);
int __wrap_ftruncate64(int fd, off_t len);

static atomic_int fail_fdatasync; /* read by the sync thread */
static int fail_write;            /* 1: EIO; 2: write half, then EIO */
static int fail_ftruncate;
static char test_dir[256]; /* faults hit files under it only (Check writes files too) */

/* A gate that stops the spool's helper thread at its gate_at-th write (gate_op 'w') or
 * fdatasync ('s') of the file named gate_name, until gate_open: a compaction caught part way. */
static char gate_name[32];
static atomic_int gate_op, gate_at, gate_count, gate_blocked, gate_open;
static pthread_t main_thread;

static bool in_test_dir(int fd)
{
    char link[64], target[512];
    snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, target, sizeof(target) - 1);
    if (n < 0 || !test_dir[0]) {
        return false;
    }
    target[n] = 0;
    size_t n_dir = strlen(test_dir);
    return strncmp(target, test_dir, n_dir) == 0 && target[n_dir] == '/';
}

/* The file `fd` is test_dir/.../name. */
static bool fd_is(int fd, const char *name)
{
    char link[64], target[512];
    snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, target, sizeof(target) - 1);
    if (n < 0 || !in_test_dir(fd)) {
        return false;
    }
    target[n] = 0;
    const char *base = strrchr(target, '/');
    return base && strcmp(base + 1, name) == 0;
}

static void gate(int fd, int op)
{
    if (!atomic_load(&gate_at) || atomic_load(&gate_op) != op ||
        pthread_equal(pthread_self(), main_thread) || !fd_is(fd, gate_name)) {
        return;
    }
    if (atomic_fetch_add(&gate_count, 1) + 1 != atomic_load(&gate_at)) {
        return;
    }
    atomic_store(&gate_blocked, 1);
    while (!atomic_load(&gate_open)) {
        usleep(1000);
    }
}

static void gate_arm(const char *name, int op, int at)
{
    snprintf(gate_name, sizeof(gate_name), "%s", name);
    atomic_store(&gate_count, 0);
    atomic_store(&gate_blocked, 0);
    atomic_store(&gate_open, 0);
    atomic_store(&gate_op, op);
    atomic_store(&gate_at, at);
}

/* Wait (10 s at most) until the helper thread is stopped at the gate. */
static void gate_wait_blocked(void)
{
    for (int i = 0; !atomic_load(&gate_blocked); i++) {
        ck_assert_msg(i < 10000, "the helper thread never reached the gate");
        usleep(1000);
    }
}

static void gate_release(void)
{
    atomic_store(&gate_at, 0);
    atomic_store(&gate_open, 1);
}

int __wrap_fdatasync(int fd)
{
    gate(fd, 's');
    if (atomic_load(&fail_fdatasync)) {
        errno = EIO;
        return -1;
    }
    return __real_fdatasync(fd);
}

ssize_t __wrap_write(int fd, const void *p, size_t n)
{
    gate(fd, 'w');
    if (fail_write && in_test_dir(fd)) {
        if (fail_write == 2 && n > 1) {
            fail_write = 1;
            return __real_write(fd, p, n / 2);
        }
        errno = EIO;
        return -1;
    }
    return __real_write(fd, p, n);
}

int __wrap_ftruncate64(int fd, off_t len)
{
    if (fail_ftruncate && in_test_dir(fd)) {
        errno = EIO;
        return -1;
    }
    return __real_ftruncate64(fd, len);
}

/* ---- helpers ---- */

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void make_test_dir(void)
{
    snprintf(test_dir, sizeof(test_dir), "/tmp/test-spool-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(test_dir));
}

static void remove_test_dir(void)
{
    ck_assert_int_eq(nftw(test_dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS), 0);
    test_dir[0] = 0;
}

/* DIR/NAME, in one of 8 rotating buffers (DIR may be an earlier result). */
static const char *path_in(const char *dir, const char *name)
{
    static char out[8][512];
    static int slot;
    char tmp[512];
    snprintf(tmp, sizeof(tmp), "%s/%s", dir, name);
    char *o = out[slot++ % 8];
    memcpy(o, tmp, sizeof(tmp));
    return o;
}

static bool exists(const char *path)
{
    return access(path, F_OK) == 0;
}

static Buf read_all(const char *path)
{
    Buf b = {0};
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "%s: %s", path, strerror(errno));
    for (;;) {
        ck_assert_int_eq(buf_reserve(&b, 4096), 0);
        size_t n = fread(b.data + b.len, 1, 4096, f);
        b.len += n;
        if (n == 0) {
            break;
        }
    }
    fclose(f);
    return b;
}

static void write_file(const char *path, View data)
{
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(data.p, 1, data.n, f), data.n);
    ck_assert_int_eq(fclose(f), 0);
}

static void copy_file(const char *from, const char *to)
{
    Buf b = read_all(from);
    write_file(to, buf_view(&b));
    buf_free(&b);
}

/* Segment files (seg-*.log) in dir. */
static size_t count_segments(const char *dir)
{
    DIR *d = opendir(dir);
    ck_assert_ptr_nonnull(d);
    size_t n = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        n += strncmp(de->d_name, "seg-", 4) == 0;
    }
    closedir(d);
    return n;
}

/* Messages handed back by spool_open, copied. */
typedef struct Got {
    size_t n;
    struct {
        uint64_t seq;
        uint8_t qos;
        bool retain;
        char topic[64];
        uint8_t payload[2048];
        size_t payload_n;
        uint16_t packet_id;
        bool pubrec;
        uint64_t session, session_seq;
        int64_t kept_at;
        bool base64;
    } m[400];
    size_t n_sessions;
    struct GotSession {
        uint64_t id, next_seq, acked;
        char name[32];
        uint32_t uid, expiry;
        int64_t left_at;
        char subs[256]; /* "qos:flags:filter " each */
    } sess[8];
} Got;

static void on_recovered(void *ud, const SpoolMessage *m)
{
    Got *g = ud;
    ck_assert_uint_lt(g->n, 400);
    ck_assert_uint_lt(m->topic.n, 64);
    ck_assert_uint_le(m->payload.n, 2048);
    if (g->n) {
        ck_assert_uint_gt(m->seq, g->m[g->n - 1].seq); /* in seq order */
    }
    g->m[g->n].seq = m->seq;
    g->m[g->n].qos = m->qos;
    g->m[g->n].retain = m->retain;
    memcpy(g->m[g->n].topic, m->topic.p, m->topic.n);
    g->m[g->n].topic[m->topic.n] = 0;
    if (m->payload.n) {
        memcpy(g->m[g->n].payload, m->payload.p, m->payload.n);
    }
    g->m[g->n].payload_n = m->payload.n;
    g->m[g->n].packet_id = m->packet_id;
    g->m[g->n].pubrec = m->pubrec;
    g->m[g->n].session = m->session;
    g->m[g->n].session_seq = m->session_seq;
    g->m[g->n].kept_at = m->kept_at;
    g->m[g->n].base64 = m->base64;
    g->n++;
}

static void on_session(void *ud, const SpoolSession *m)
{
    Got *g = ud;
    ck_assert_uint_lt(g->n_sessions, 8);
    ck_assert_uint_lt(m->name.n, 32);
    struct GotSession *o = &g->sess[g->n_sessions++];
    *o = (struct GotSession){.id = m->id,
                             .next_seq = m->next_seq,
                             .acked = m->acked,
                             .uid = m->uid,
                             .expiry = m->expiry,
                             .left_at = m->left_at};
    memcpy(o->name, m->name.p, m->name.n);
    View subs = m->subs;
    SpoolSessionSub sub;
    size_t w = 0;
    while (spool_session_sub_next(&subs, &sub) == 1) {
        int n = snprintf(o->subs + w, sizeof(o->subs) - w, "%u:%d%d%d:%.*s ", sub.qos, sub.base64,
                         sub.no_local, sub.retain_as_published, (int)sub.filter.n,
                         (const char *)sub.filter.p);
        ck_assert(n > 0 && (size_t)n < sizeof(o->subs) - w);
        w += (size_t)n;
    }
}

static int spool_open_got(struct ev_loop *l, const char *dir, enum fsync_mode mode, Got *g,
                          Spool **ret)
{
    return spool_open(l, dir, mode, &(SpoolRecovery){on_recovered, on_session, g}, ret);
}

static struct ev_loop *loop;

static Spool *open_spool(const char *dir, enum fsync_mode mode, Got *g)
{
    Spool *s = NULL;
    if (g) {
        memset(g, 0, sizeof(*g));
    }
    static Got ignored;
    ignored.n = 0;
    int r = spool_open_got(loop, dir, mode, g ? g : &ignored, &s);
    ck_assert_msg(r == 0, "spool_open(%s): %s", dir, strerror(-r));
    return s;
}

static uint64_t add(Spool *s, uint8_t qos, const char *topic, const char *payload)
{
    uint64_t seq, mark;
    int r = spool_add(
        s,
        &(SpoolMessage){
            .qos = qos, .retain = false, .topic = VIEW_STR(topic), .payload = VIEW_STR(payload)},
        &seq, &mark);
    ck_assert_msg(r == 0, "spool_add: %s", strerror(-r));
    return seq;
}

typedef struct Durable {
    int calls, last_error;
} Durable;

static void on_durable(void *ud, int error)
{
    Durable *d = ud;
    d->last_error = error;
    d->calls++;
}

static void run_until(const int *calls, int want)
{
    while (*calls < want) {
        ev_run(loop, EVRUN_ONCE);
    }
}

/* stderr into a file while a piece of a test runs. */
static int saved_stderr = -1;
static char capture_path[512];

static void capture_begin(void)
{
    snprintf(capture_path, sizeof(capture_path), "%s.log", test_dir);
    int fd = open(capture_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    ck_assert_int_ge(fd, 0);
    saved_stderr = dup(2);
    ck_assert_int_ge(saved_stderr, 0);
    ck_assert_int_eq(dup2(fd, 2), 2);
    close(fd);
}

static Buf capture_end(void)
{
    ck_assert_int_eq(dup2(saved_stderr, 2), 2);
    close(saved_stderr);
    Buf b = read_all(capture_path);
    ck_assert_int_eq(buf_reserve(&b, 1), 0);
    b.data[b.len] = 0;
    unlink(capture_path);
    fputs((char *)b.data, stderr); /* still shown with the test's output */
    return b;
}

static size_t count_str(const Buf *b, const char *needle)
{
    size_t n = 0;
    for (const char *p = (const char *)b->data; (p = strstr(p, needle)); p++) {
        n++;
    }
    return n;
}

static void setup(void)
{
    main_thread = pthread_self();
    loop = ev_loop_new(EVFLAG_AUTO);
    ck_assert_ptr_nonnull(loop);
    log_set_level(LOG_LEVEL_DEBUG);
    make_test_dir();
}

static void teardown(void)
{
    remove_test_dir();
    ev_loop_destroy(loop);
}

/* ---- the record format ---- */

START_TEST(crc32_vector)
{
    /* The standard check value of CRC-32/IEEE. */
    ck_assert_uint_eq(crc32_update(0, VIEW_STR("123456789")), 0xcbf43926u);
    ck_assert_uint_eq(crc32_update(0, VIEW_NULL), 0);
}
END_TEST

START_TEST(round_trip)
{
    Buf b = {0};
    ck_assert_int_eq(
        spool_record_add(&b, 0, 7, 1, true, VIEW_STR("a/b"), VIEW("\0\1\2", 3), VIEW_NULL, 0), 0);
    ck_assert_int_eq(spool_record_done(&b, 0, 7), 0);
    ck_assert_int_eq(spool_record_add(&b, 0, 8, 2, false, VIEW_STR("t"), VIEW_NULL, VIEW_NULL, 0),
                     0);
    SpoolRecord r;
    View in = buf_view(&b);
    ck_assert_int_eq(spool_record_parse(in, 0, &r), 1);
    ck_assert_int_eq(r.type, SPOOL_ADD);
    ck_assert_uint_eq(r.seq, 7);
    ck_assert_int_eq(r.qos, 1);
    ck_assert(r.retain);
    ck_assert_view_str(r.topic, "a/b");
    ck_assert_view_eq(r.payload, VIEW("\0\1\2", 3));
    in = VIEW(in.p + r.size, in.n - r.size);
    ck_assert_int_eq(spool_record_parse(in, 0, &r), 1);
    ck_assert_int_eq(r.type, SPOOL_DONE);
    ck_assert_uint_eq(r.seq, 7);
    in = VIEW(in.p + r.size, in.n - r.size);
    ck_assert_int_eq(spool_record_parse(in, 0, &r), 1);
    ck_assert_uint_eq(r.seq, 8);
    ck_assert_uint_eq(r.payload.n, 0);
    ck_assert_uint_eq(r.size, in.n);
    buf_free(&b);
}
END_TEST

START_TEST(format2_round_trip)
{
    uint64_t held[SPOOL_HELD_WORDS] = {0}, back[SPOOL_HELD_WORDS];
    held[0] = 1u << 3;
    held[1023] = 1ull << 63; /* id 65535 */
    Buf b = {0};
    ck_assert_int_eq(spool_record_header(&b, 77, held), 0);
    ck_assert_uint_eq(b.len, SPOOL_HEADER_MIN + 4);
    ck_assert_int_eq(spool_record_state(&b, 77, 5, 300, true), 0);
    ck_assert_int_eq(spool_record_incoming(&b, 77, 9, true), 0);
    ck_assert_int_eq(spool_record_incoming_clear(&b, 77), 0);
    ck_assert_int_eq(spool_record_state(&b, 77, 5, 0, false), -EINVAL);
    ck_assert_int_eq(spool_record_incoming(&b, 77, 0, true), -EINVAL);
    SpoolRecord r;
    View in = buf_view(&b);
    ck_assert_int_eq(spool_record_parse(in, 12345, &r), 1); /* a header ignores the salt */
    ck_assert_int_eq(r.type, SPOOL_HEADER);
    ck_assert_uint_eq(r.version, SPOOL_FORMAT);
    ck_assert_uint_eq(r.salt, 77);
    spool_record_held(&r, back);
    ck_assert_mem_eq(back, held, sizeof(held));
    in = VIEW(in.p + r.size, in.n - r.size);
    ck_assert_int_eq(spool_record_parse(in, 78, &r), -EBADMSG); /* another segment's salt */
    ck_assert_int_eq(spool_record_parse(in, 77, &r), 1);
    ck_assert_int_eq(r.type, SPOOL_STATE);
    ck_assert_uint_eq(r.size, SPOOL_STATE_SIZE);
    ck_assert_uint_eq(r.seq, 5);
    ck_assert_uint_eq(r.packet_id, 300);
    ck_assert(r.pubrec);
    in = VIEW(in.p + r.size, in.n - r.size);
    ck_assert_int_eq(spool_record_parse(in, 77, &r), 1);
    ck_assert_int_eq(r.type, SPOOL_INCOMING);
    ck_assert_uint_eq(r.packet_id, 9);
    ck_assert(r.held);
    in = VIEW(in.p + r.size, in.n - r.size);
    ck_assert_int_eq(spool_record_parse(in, 77, &r), 1);
    ck_assert_int_eq(r.type, SPOOL_INCOMING_CLEAR);
    ck_assert_uint_eq(r.size, in.n);
    buf_free(&b);
}
END_TEST

START_TEST(torn_at_every_length)
{
    Buf b = {0};
    ck_assert_int_eq(
        spool_record_add(&b, 9, 1, 1, false, VIEW_STR("x/y"), VIEW_STR("payload"), VIEW_NULL, 0),
        0);
    SpoolRecord r;
    for (size_t k = 0; k < b.len; k++) {
        ck_assert_int_eq(spool_record_parse(VIEW(b.data, k), 9, &r), 0);
    }
    ck_assert_int_eq(spool_record_parse(buf_view(&b), 9, &r), 1);
    buf_free(&b);
}
END_TEST

START_TEST(every_flipped_bit_is_caught)
{
    Buf b = {0};
    ck_assert_int_eq(
        spool_record_add(&b, 0, 99, 1, false, VIEW_STR("t"), VIEW_STR("data"), VIEW_NULL, 0), 0);
    ck_assert_int_eq(spool_record_state(&b, 0, 99, 7, false), 0);
    for (size_t i = 0; i < b.len * 8; i++) {
        b.data[i / 8] ^= (uint8_t)(1u << (i % 8));
        SpoolRecord r;
        View in = buf_view(&b);
        int res = spool_record_parse(in, 0, &r);
        if (res == 1 && i / 8 >= r.size) { /* the flip is in the second record */
            in = VIEW(in.p + r.size, in.n - r.size);
            res = spool_record_parse(in, 0, &r);
        }
        /* A flipped length may also read as "incomplete": never as a good record. */
        ck_assert_msg(res == -EBADMSG || res == 0, "bit %zu: %d", i, res);
        b.data[i / 8] ^= (uint8_t)(1u << (i % 8));
    }
    buf_free(&b);
}
END_TEST

/* A format 2 segment: header, then records 1..n, each an ADD of ~40 bytes. */
static Buf segment(uint32_t salt, int n)
{
    Buf b = {0};
    ck_assert_int_eq(spool_record_header(&b, salt, NULL), 0);
    for (int i = 1; i <= n; i++) {
        ck_assert_int_eq(spool_record_add(&b, salt, (uint64_t)i, 1, false, VIEW_STR("topic"),
                                          VIEW_STR("a payload of some bytes"), VIEW_NULL, 0),
                         0);
    }
    return b;
}

START_TEST(reader_skips_damage_and_finds_torn_tails)
{
    Buf b = segment(0xabcdef, 10);
    size_t rec = (b.len - SPOOL_HEADER_MIN) / 10;
    SpoolReader rd;
    SpoolRecord r;
    size_t off, len;
    /* Damage inside record 4: exactly that one record is skipped. */
    memset(b.data + SPOOL_HEADER_MIN + 3 * rec + 20, 0xee, 8);
    ck_assert_int_eq(spool_reader_init(&rd, buf_view(&b)), 0);
    ck_assert_uint_eq(rd.version, SPOOL_FORMAT);
    int seen = 0;
    int k;
    while ((k = spool_reader_next(&rd, &r, &off, &len)) == SPOOL_READ_RECORD) {
        seen++;
    }
    ck_assert_int_eq(k, SPOOL_READ_DAMAGED);
    ck_assert_int_eq(seen, 4); /* header and 1..3 */
    ck_assert_uint_eq(off, SPOOL_HEADER_MIN + 3 * rec);
    ck_assert_uint_eq(len, rec);
    while ((k = spool_reader_next(&rd, &r, &off, &len)) == SPOOL_READ_RECORD) {
        seen++;
    }
    ck_assert_int_eq(k, SPOOL_READ_END);
    ck_assert_int_eq(seen, 10);
    /* Damage in the last record: nothing valid follows, a torn tail. */
    memset(b.data + b.len - 10, 0xee, 4);
    ck_assert_int_eq(spool_reader_init(&rd, buf_view(&b)), 0);
    while ((k = spool_reader_next(&rd, &r, &off, &len)) != SPOOL_READ_END) {
        if (k == SPOOL_READ_TORN) {
            ck_assert_uint_eq(off, b.len - rec);
            ck_assert_uint_eq(len, rec);
        }
    }
    buf_free(&b);
}
END_TEST

START_TEST(reader_never_takes_a_foreign_record)
{
    /* A payload holding a record of another segment (another salt) and of a format 1
     * segment: after damage just before it, the reader must not resynchronise on it. */
    Buf inner = {0};
    ck_assert_int_eq(spool_record_done(&inner, 5, 1), 0);
    ck_assert_int_eq(spool_record_done(&inner, 0, 2), 0);
    Buf b = {0};
    ck_assert_int_eq(spool_record_header(&b, 6, NULL), 0);
    ck_assert_int_eq(
        spool_record_add(&b, 6, 1, 1, false, VIEW_STR("t"), buf_view(&inner), VIEW_NULL, 0), 0);
    b.data[SPOOL_HEADER_MIN + 10] ^= 1; /* the ADD's seq */
    SpoolReader rd;
    SpoolRecord r;
    size_t off, len;
    ck_assert_int_eq(spool_reader_init(&rd, buf_view(&b)), 0);
    ck_assert_int_eq(spool_reader_next(&rd, &r, &off, &len), SPOOL_READ_RECORD);
    ck_assert_int_eq(spool_reader_next(&rd, &r, &off, &len), SPOOL_READ_TORN);
    ck_assert_uint_eq(off, SPOOL_HEADER_MIN);
    buf_free(&b);
    buf_free(&inner);
}
END_TEST

/* ADD5 (format 3) carries a message's MQTT 5 properties and its expiry; a segment of
 * format 2 (header version 2) still reads, but an ADD5 cannot stand in one. */
START_TEST(add5_and_format2_segments)
{
    static const uint8_t props[] = {0x03, 0, 1, 't'};
    Buf b = segment(1, 0);
    ck_assert_int_eq(spool_record_add(&b, 1, 7, 1, false, VIEW_STR("a/b"), VIEW_STR("pay"),
                                      VIEW(props, sizeof(props)), 1700000000123),
                     0);
    SpoolReader rd;
    SpoolRecord r;
    size_t off, len;
    ck_assert_int_eq(spool_reader_init(&rd, buf_view(&b)), 0);
    ck_assert_int_eq(spool_reader_next(&rd, &r, &off, &len), SPOOL_READ_RECORD); /* header */
    ck_assert_int_eq(spool_reader_next(&rd, &r, &off, &len), SPOOL_READ_RECORD);
    ck_assert_int_eq(r.type, SPOOL_ADD5);
    ck_assert_view_str(r.topic, "a/b");
    ck_assert_view_str(r.payload, "pay");
    ck_assert_view_eq(r.props, VIEW(props, sizeof(props)));
    ck_assert_int_eq(r.expires_at, 1700000000123);
    /* The same bytes under a format 2 header: the header reads, the ADD5 is damage. */
    b.data[SPOOL_HEADER_VERSION] = 2;
    spool_record_reseal(b.data, SPOOL_HEADER_MIN, 0);
    ck_assert_int_eq(spool_reader_init(&rd, buf_view(&b)), 0);
    ck_assert_uint_eq(rd.version, 2);
    ck_assert_int_eq(spool_reader_next(&rd, &r, &off, &len), SPOOL_READ_RECORD);
    ck_assert_uint_eq(r.version, 2);
    ck_assert_int_ne(spool_reader_next(&rd, &r, &off, &len), SPOOL_READ_RECORD);
    /* A plain message stays an ADD, byte for byte what format 2 wrote. */
    buf_clear(&b);
    ck_assert_int_eq(spool_record_add(&b, 0, 8, 0, true, VIEW_STR("t"), VIEW_NULL, VIEW_NULL, 0),
                     0);
    ck_assert_uint_eq(b.data[8], SPOOL_ADD);
    ck_assert_uint_eq(b.len, 8 + 9 + 8 + 1);
    buf_free(&b);
}
END_TEST

START_TEST(reader_refuses_a_newer_format)
{
    Buf b = segment(1, 2);
    b.data[SPOOL_HEADER_VERSION] = SPOOL_FORMAT + 1;
    SpoolReader rd;
    ck_assert_int_eq(spool_reader_init(&rd, buf_view(&b)), -EPROTONOSUPPORT);
    ck_assert_uint_eq(rd.version, SPOOL_FORMAT + 1);
    /* With its checksum made good again, or broken further: the same. */
    spool_record_reseal(b.data, SPOOL_HEADER_MIN, 0);
    ck_assert_int_eq(spool_reader_init(&rd, buf_view(&b)), -EPROTONOSUPPORT);
    b.data[0] ^= 0xff;
    ck_assert_int_eq(spool_reader_init(&rd, buf_view(&b)), -EPROTONOSUPPORT);
    /* A format 1 segment has no header. */
    Buf v1 = {0};
    ck_assert_int_eq(
        spool_record_add(&v1, 0, 1, 1, false, VIEW_STR("t"), VIEW_STR("p"), VIEW_NULL, 0), 0);
    ck_assert_int_eq(spool_reader_init(&rd, buf_view(&v1)), 0);
    ck_assert_uint_eq(rd.version, 1);
    buf_free(&v1);
    buf_free(&b);
}
END_TEST

/* ---- the spool ---- */

/* tests/fixtures/spool-v1/README.md */
static void check_fixture_messages(const Got *g, size_t n)
{
    ck_assert_uint_eq(g->n, n);
    for (int i = 0; i < 20; i++) {
        char topic[32], payload[32];
        snprintf(topic, sizeof(topic), "fixture/%d", i);
        snprintf(payload, sizeof(payload), "message %d", i);
        ck_assert_uint_eq(g->m[i].seq, (uint64_t)i + 5);
        ck_assert_str_eq(g->m[i].topic, topic);
        ck_assert_int_eq(g->m[i].qos, i % 2 ? 2 : 1);
        ck_assert_int_eq(g->m[i].retain, i % 5 == 0);
        ck_assert_uint_eq(g->m[i].packet_id, 0);
        ck_assert(!g->m[i].pubrec);
        if (i == 7) {
            ck_assert_uint_eq(g->m[i].payload_n, 7);
            ck_assert_mem_eq(g->m[i].payload, "\x00\x01\x02\xff\xfe\x80\x0a", 7);
        } else if (i == 13) {
            ck_assert_uint_eq(g->m[i].payload_n, 0);
        } else {
            ck_assert_uint_eq(g->m[i].payload_n, strlen(payload));
            ck_assert_mem_eq(g->m[i].payload, payload, strlen(payload));
        }
    }
}

START_TEST(fixture_v1)
{
    const char *fixture = getenv("SPOOL_V1_FIXTURE");
    ck_assert_msg(fixture != NULL, "SPOOL_V1_FIXTURE is not set");
    const char *dir = path_in(test_dir, "spool");
    ck_assert_int_eq(mkdir(dir, 0700), 0);
    const char *names[] = {"seg-0000000000000001.log", "seg-0000000000000002.log"};
    for (int i = 0; i < 2; i++) {
        copy_file(path_in(fixture, names[i]), path_in(dir, names[i]));
    }
    static Got g;
    Spool *s = open_spool(dir, FSYNC_BATCH, &g);
    check_fixture_messages(&g, 20);
    SpoolHealth h;
    spool_health(s, &h);
    ck_assert_uint_eq(h.damaged_regions + h.damaged_bytes + h.torn_bytes, 0);
    ck_assert_int_eq(h.write_error, 0);
    ck_assert_uint_eq(spool_pending(s), 20);
    /* Format 2 from here on: a new message, and state for an old one. */
    uint64_t seq = add(s, 2, "after/v1", "new");
    ck_assert_uint_eq(seq, 25);
    ck_assert_int_eq(spool_sent(s, 6, 41), 0);
    spool_done(s, 5);
    spool_close(s);
    s = open_spool(dir, FSYNC_BATCH, &g);
    ck_assert_uint_eq(g.n, 20);
    ck_assert_uint_eq(g.m[0].seq, 6);
    ck_assert_uint_eq(g.m[0].packet_id, 41);
    ck_assert_str_eq(g.m[19].topic, "after/v1");
    spool_close(s);
}
END_TEST

START_TEST(newer_format_is_refused)
{
    const char *dir = path_in(test_dir, "spool");
    ck_assert_int_eq(mkdir(dir, 0700), 0);
    /* Segment 1: format 1 with a torn tail (must stay untouched: refusing comes first). */
    Buf v1 = {0};
    ck_assert_int_eq(
        spool_record_add(&v1, 0, 1, 1, false, VIEW_STR("t"), VIEW_STR("p"), VIEW_NULL, 0), 0);
    ck_assert_int_eq(buf_append(&v1, "xyz", 3), 0);
    write_file(path_in(dir, "seg-0000000000000001.log"), buf_view(&v1));
    /* Segment 2: what a format 5 daemon might write. */
    Buf v3 = segment(42, 3);
    v3.data[SPOOL_HEADER_VERSION] = 5;
    spool_record_reseal(v3.data, SPOOL_HEADER_MIN, 0);
    write_file(path_in(dir, "seg-0000000000000002.log"), buf_view(&v3));
    Spool *s = NULL;
    static Got g;
    capture_begin();
    int r = spool_open_got(loop, dir, FSYNC_BATCH, &g, &s);
    Buf log = capture_end();
    ck_assert_int_eq(r, -EPROTONOSUPPORT);
    ck_assert_ptr_null(s);
    ck_assert_uint_eq(g.n, 0);
    char want[600];
    snprintf(want, sizeof(want),
             "spool: %s was written by a newer mqttbridged (spool format 5); this version reads "
             "formats 1 to 4: refusing to start rather than misread it",
             path_in(dir, "seg-0000000000000002.log"));
    ck_assert_msg(strstr((char *)log.data, want), "log: %s", log.data);
    Buf after1 = read_all(path_in(dir, "seg-0000000000000001.log"));
    Buf after3 = read_all(path_in(dir, "seg-0000000000000002.log"));
    ck_assert_view_eq(buf_view(&after1), buf_view(&v1));
    ck_assert_view_eq(buf_view(&after3), buf_view(&v3));
    ck_assert_uint_eq(count_segments(dir), 2);
    buf_free(&after1);
    buf_free(&after3);
    buf_free(&log);
    buf_free(&v1);
    buf_free(&v3);
}
END_TEST

START_TEST(new_segments_have_a_header)
{
    const char *dir = path_in(test_dir, "spool");
    Spool *s = open_spool(dir, FSYNC_NEVER, NULL);
    add(s, 1, "a", "b");
    spool_close(s);
    Buf b = read_all(path_in(dir, "seg-0000000000000001.log"));
    SpoolReader rd;
    SpoolRecord r;
    size_t off, len;
    ck_assert_int_eq(spool_reader_init(&rd, buf_view(&b)), 0);
    ck_assert_uint_eq(rd.version, SPOOL_FORMAT);
    ck_assert_int_eq(spool_reader_next(&rd, &r, &off, &len), SPOOL_READ_RECORD);
    ck_assert_int_eq(r.type, SPOOL_HEADER);
    ck_assert_uint_ne(r.salt, 0);
    ck_assert_int_eq(spool_reader_next(&rd, &r, &off, &len), SPOOL_READ_RECORD);
    ck_assert_int_eq(r.type, SPOOL_ADD);
    ck_assert_int_eq(spool_reader_next(&rd, &r, &off, &len), SPOOL_READ_END);
    buf_free(&b);
}
END_TEST

START_TEST(send_state_round_trip)
{
    const char *dir = path_in(test_dir, "spool");
    Spool *s = open_spool(dir, FSYNC_BATCH, NULL);
    uint64_t a = add(s, 2, "a", "1"), b = add(s, 1, "b", "2"), c = add(s, 2, "c", "3");
    uint64_t d = add(s, 2, "d", "4");
    ck_assert_int_eq(spool_pubrec(s, d), -EINVAL); /* never sent */
    ck_assert_int_eq(spool_sent(s, a, 11), 0);
    ck_assert_int_eq(spool_pubrec(s, a), 0);
    ck_assert_int_eq(spool_pubrec(s, a), 0); /* again: nothing new */
    ck_assert_int_eq(spool_sent(s, b, 12), 0);
    ck_assert_int_eq(spool_pubrec(s, b), -EINVAL); /* QoS 1 */
    ck_assert_int_eq(spool_sent(s, c, 13), 0);
    ck_assert_int_eq(spool_sent(s, c, 14), 0); /* the id changed */
    ck_assert_int_eq(spool_sent(s, 999, 1), -ENOENT);
    ck_assert_int_eq(spool_sent(s, a, 0), -EINVAL);
    spool_close(s);
    static Got g;
    s = open_spool(dir, FSYNC_BATCH, &g);
    ck_assert_uint_eq(g.n, 4);
    ck_assert_uint_eq(g.m[0].packet_id, 11);
    ck_assert(g.m[0].pubrec);
    ck_assert_uint_eq(g.m[1].packet_id, 12);
    ck_assert(!g.m[1].pubrec);
    ck_assert_uint_eq(g.m[2].packet_id, 14);
    ck_assert_uint_eq(g.m[3].packet_id, 0);
    /* Sent again under another id (a new broker session): PUBREC is forgotten. */
    ck_assert_int_eq(spool_sent(s, a, 20), 0);
    spool_done(s, c);
    spool_close(s);
    s = open_spool(dir, FSYNC_BATCH, &g);
    ck_assert_uint_eq(g.n, 3);
    ck_assert_uint_eq(g.m[0].packet_id, 20);
    ck_assert(!g.m[0].pubrec);
    spool_close(s);
}
END_TEST

/* Run the loop until the compaction in flight, if any, is finished and applied. */
static void settle_compaction(Spool *s)
{
    while (spool_compacting(s)) {
        ev_run(loop, EVRUN_ONCE);
    }
}

/* Messages added and acknowledged at once, until the spool has rotated `n` more times; the
 * loop runs after each, as in the daemon, and lets a compaction finish before the next write
 * (so every rotation gets its compaction, as when they ran on the loop thread). */
static void churn(Spool *s, int rotations)
{
    char payload[1001];
    memset(payload, 'p', 1000);
    payload[1000] = 0;
    for (int i = 0; i < rotations * 8; i++) {
        spool_done(s, add(s, 1, "churn", payload));
        settle_compaction(s);
    }
}

START_TEST(send_state_survives_compaction)
{
    const char *dir = path_in(test_dir, "spool");
    Spool *s = open_spool(dir, FSYNC_NEVER, NULL);
    spool_set_segment_max(s, 8192);
    uint64_t a = add(s, 2, "a", "kept 1"), b = add(s, 1, "b", "kept 2");
    uint64_t c = add(s, 2, "c", "kept 3");
    ck_assert_int_eq(spool_sent(s, a, 100), 0);
    ck_assert_int_eq(spool_pubrec(s, a), 0);
    churn(s, 3);
    /* c's state is written in a later segment than its ADD: that segment must not go. */
    ck_assert_int_eq(spool_sent(s, c, 300), 0);
    churn(s, 6);
    /* Segment 1 (with a's and c's ADD and a's state) was compacted away. */
    ck_assert(!exists(path_in(dir, "seg-0000000000000001.log")));
    ck_assert_uint_le(count_segments(dir), 3);
    ck_assert_uint_eq(spool_pending(s), 3);
    spool_close(s);
    static Got g;
    s = open_spool(dir, FSYNC_NEVER, &g);
    ck_assert_uint_eq(g.n, 3);
    ck_assert_uint_eq(g.m[0].seq, a);
    ck_assert_uint_eq(g.m[0].packet_id, 100);
    ck_assert(g.m[0].pubrec);
    ck_assert_uint_eq(g.m[1].seq, b);
    ck_assert_uint_eq(g.m[1].packet_id, 0);
    ck_assert_uint_eq(g.m[2].seq, c);
    ck_assert_uint_eq(g.m[2].packet_id, 300);
    ck_assert_str_eq(g.m[2].topic, "c");
    ck_assert_mem_eq(g.m[2].payload, "kept 3", 6);
    spool_close(s);
}
END_TEST

/* ---- compaction on the helper thread ---- */

/* What a pending message must look like after recovery. */
typedef struct Want {
    uint64_t seq;
    char topic[16];
    uint16_t packet_id;
    bool pubrec;
} Want;

static Want *want_add(Want *w, size_t *n, Spool *s, uint8_t qos, const char *topic)
{
    w[*n] = (Want){.seq = add(s, qos, topic, topic)}; /* the payload is the topic */
    snprintf(w[*n].topic, sizeof(w[*n].topic), "%s", topic);
    return &w[(*n)++];
}

static void want_sent(Spool *s, Want *w, uint16_t packet_id, bool pubrec)
{
    ck_assert_int_eq(spool_sent(s, w->seq, packet_id), 0);
    if (pubrec) {
        ck_assert_int_eq(spool_pubrec(s, w->seq), 0);
    }
    w->packet_id = packet_id;
    w->pubrec = pubrec;
}

static void want_done(Spool *s, Want *w, size_t *n, size_t i)
{
    spool_done(s, w[i].seq);
    memmove(&w[i], &w[i + 1], (*n - i - 1) * sizeof(*w));
    (*n)--;
}

/* Recovery of `dir` gives back exactly `want` (in seq order), twice in a row. */
static void check_recovered(const char *dir, const Want *want, size_t n)
{
    static Got g;
    for (int again = 0; again < 2; again++) {
        Spool *s = open_spool(dir, FSYNC_BATCH, &g);
        ck_assert_uint_eq(g.n, n);
        for (size_t i = 0; i < n; i++) {
            ck_assert_uint_eq(g.m[i].seq, want[i].seq);
            ck_assert_str_eq(g.m[i].topic, want[i].topic);
            ck_assert_uint_eq(g.m[i].payload_n, strlen(want[i].topic));
            ck_assert_mem_eq(g.m[i].payload, want[i].topic, g.m[i].payload_n);
            ck_assert_uint_eq(g.m[i].packet_id, want[i].packet_id);
            ck_assert_int_eq(g.m[i].pubrec, want[i].pubrec);
        }
        SpoolHealth h;
        spool_health(s, &h);
        ck_assert_uint_eq(h.damaged_regions, 0);
        spool_close(s);
    }
}

/* The segment files of `from` copied into a new directory `to`: what a kill -9 leaves. */
static void copy_segments(const char *from, const char *to)
{
    ck_assert_int_eq(mkdir(to, 0700), 0);
    DIR *d = opendir(from);
    ck_assert_ptr_nonnull(d);
    struct dirent *de;
    while ((de = readdir(d))) {
        if (strncmp(de->d_name, "seg-", 4) == 0) {
            char a[512], b[512];
            snprintf(a, sizeof(a), "%s/%s", from, de->d_name);
            snprintf(b, sizeof(b), "%s/%s", to, de->d_name);
            copy_file(a, b);
        }
    }
    closedir(d);
}

static off_t file_size(const char *path)
{
    struct stat st;
    ck_assert_int_eq(stat(path, &st), 0);
    return st.st_size;
}

/* A message of 1000 bytes, added and acknowledged at once. */
static void churn_one(Spool *s)
{
    char payload[1001];
    memset(payload, 'p', 1000);
    payload[1000] = 0;
    spool_done(s, add(s, 1, "churn", payload));
}

/* Acknowledged messages until segment 1 is full (segment_max 4096): the next add rotates,
 * copying what is pending in segment 1 into segment 2; segment 3 becomes the current one. */
static void fill_segment_1(Spool *s, const char *dir)
{
    while (file_size(path_in(dir, "seg-0000000000000001.log")) < 4096) {
        churn_one(s);
    }
    ck_assert_uint_eq(count_segments(dir), 1);
}

START_TEST(compaction_beside_writes)
{
    /* Compactions run while messages come and go and send states change, the loop only
     * polled: a copy of the directory taken at any moment (a kill -9) recovers exactly what
     * is pending, and so does the directory itself. */
    char dir[300];
    snprintf(dir, sizeof(dir), "%s/spool", test_dir);
    Spool *s = open_spool(dir, FSYNC_BATCH, NULL);
    spool_set_segment_max(s, 4096);
    static Want want[64];
    size_t n = 0;
    char payload[1001], topic[16];
    memset(payload, 'p', 1000);
    payload[1000] = 0;
    for (int round = 0; round < 60; round++) {
        if (round % 2 == 0) {
            snprintf(topic, sizeof(topic), "k/%d", round);
            want_add(want, &n, s, 2, topic);
        }
        if (round % 3 == 2) {
            want_done(s, want, &n, (size_t)round % n);
        }
        if (n) {
            /* Ids unique among pending messages (else one supersedes another). */
            want_sent(s, &want[(size_t)round % n], (uint16_t)(1000 + round), round % 4 == 0);
        }
        for (int i = 0; i < 3; i++) {
            spool_done(s, add(s, 1, "churn", payload));
        }
        ev_run(loop, EVRUN_NOWAIT);
        if (round % 6 == 5) {
            char copy[300];
            snprintf(copy, sizeof(copy), "%s/killed-%d", test_dir, round);
            copy_segments(dir, copy);
            check_recovered(copy, want, n);
        }
    }
    settle_compaction(s);
    churn(s, 3); /* every rotation compacts now */
    ck_assert(!exists(path_in(dir, "seg-0000000000000001.log")));
    ck_assert_uint_le(count_segments(dir), 3);
    ck_assert_uint_eq(spool_pending(s), n);
    spool_close(s);
    check_recovered(dir, want, n);
}
END_TEST

/* Stop the helper thread at its `at`-th `op` ('w' write, 's' fdatasync) of the output segment
 * of the first compaction; change things meanwhile, take a copy of the directory (a kill -9
 * then), let it go on. Both recover exactly what is pending. */
static void kill_mid_compaction(int op, int at)
{
    char dir[300];
    snprintf(dir, sizeof(dir), "%s/spool", test_dir);
    Spool *s = open_spool(dir, FSYNC_BATCH, NULL);
    spool_set_segment_max(s, 4096);
    static Want want[8];
    size_t n = 0;
    want_sent(s, want_add(want, &n, s, 2, "a"), 10, true);
    want_sent(s, want_add(want, &n, s, 1, "b"), 11, false);
    want_add(want, &n, s, 2, "c");
    want_add(want, &n, s, 1, "d");
    fill_segment_1(s, dir);
    gate_arm("seg-0000000000000002.log", op, at);
    churn_one(s); /* rotates: segment 2 gets copies of a..d, segment 3 the rest */
    ck_assert(spool_compacting(s));
    gate_wait_blocked();
    /* Meanwhile, in segment 3: b acknowledged, c sent and PUBREC'd. */
    want_done(s, want, &n, 1);
    want_sent(s, &want[1], 12, true);
    char killed[300];
    snprintf(killed, sizeof(killed), "%s/killed", test_dir);
    copy_segments(dir, killed);
    gate_release();
    check_recovered(killed, want, n);
    settle_compaction(s);
    ck_assert(!exists(path_in(dir, "seg-0000000000000001.log")));
    ck_assert(exists(path_in(dir, "seg-0000000000000002.log")));
    /* With c acknowledged, segment 3 holds nothing pending: it goes at the next rotation,
     * and segment 2 (nothing to merge it with) stays. b's DONE, written while b was being
     * copied into segment 2, must be carried on while segment 2 is there. */
    want_done(s, want, &n, 1);
    churn(s, 3);
    ck_assert(!exists(path_in(dir, "seg-0000000000000003.log")));
    ck_assert(exists(path_in(dir, "seg-0000000000000002.log")));
    spool_close(s);
    check_recovered(dir, want, n);
}

START_TEST(kill_before_the_first_copy)
{
    kill_mid_compaction('w', 1);
}
END_TEST

START_TEST(kill_between_copies)
{
    kill_mid_compaction('w', 3);
}
END_TEST

START_TEST(kill_before_the_copies_are_synced)
{
    kill_mid_compaction('s', 1);
}
END_TEST

START_TEST(close_abandons_a_compaction)
{
    /* Closed with a compaction queued or finished but not taken back by the loop: as a kill,
     * nothing was deleted for it. */
    char dir[300];
    snprintf(dir, sizeof(dir), "%s/spool", test_dir);
    Spool *s = open_spool(dir, FSYNC_BATCH, NULL);
    spool_set_segment_max(s, 4096);
    static Want want[8];
    size_t n = 0;
    want_sent(s, want_add(want, &n, s, 2, "a"), 7, false);
    want_add(want, &n, s, 1, "b");
    fill_segment_1(s, dir);
    want_add(want, &n, s, 1, "c");
    ck_assert(spool_compacting(s));
    spool_close(s);
    ck_assert(exists(path_in(dir, "seg-0000000000000001.log")));
    check_recovered(dir, want, n);
}
END_TEST

START_TEST(compaction_sync_failure_keeps_the_originals)
{
    char dir[300];
    snprintf(dir, sizeof(dir), "%s/spool", test_dir);
    Spool *s = open_spool(dir, FSYNC_BATCH, NULL);
    spool_set_segment_max(s, 4096);
    static Want want[8];
    size_t n = 0;
    want_sent(s, want_add(want, &n, s, 2, "a"), 7, true);
    want_add(want, &n, s, 1, "b");
    fill_segment_1(s, dir);
    capture_begin();
    atomic_store(&fail_fdatasync, 1);
    want_add(want, &n, s, 1, "c");
    settle_compaction(s);
    atomic_store(&fail_fdatasync, 0);
    /* The copies were given up, the originals kept. */
    ck_assert(exists(path_in(dir, "seg-0000000000000001.log")));
    ck_assert(!exists(path_in(dir, "seg-0000000000000002.log")));
    SpoolHealth h;
    spool_health(s, &h);
    ck_assert_int_eq(h.write_error, EIO);
    /* A later rotation compacts again, and that works. */
    churn(s, 2);
    Buf log = capture_end();
    ck_assert_uint_eq(count_str(&log, "cannot sync"), 1);
    ck_assert_uint_ge(count_str(&log, "works again"), 1);
    ck_assert(!exists(path_in(dir, "seg-0000000000000001.log")));
    spool_health(s, &h);
    ck_assert_int_eq(h.write_error, 0);
    spool_close(s);
    buf_free(&log);
    check_recovered(dir, want, n);
}
END_TEST

START_TEST(acknowledged_stays_acknowledged)
{
    /* A DONE record whose segment holds nothing else must outlive the older segment that
     * holds its ADD: across restarts (each starts a segment) and across rotations. */
    const char *dir = path_in(test_dir, "spool");
    Spool *s = open_spool(dir, FSYNC_BATCH, NULL);
    uint64_t a = add(s, 2, "a", "acked"), b = add(s, 2, "b", "pending");
    ck_assert_int_eq(spool_sent(s, a, 1), 0);
    spool_close(s);
    s = open_spool(dir, FSYNC_BATCH, NULL);
    spool_done(s, a); /* its DONE is in segment 2, its ADD in segment 1 (kept for b) */
    spool_close(s);
    static Got g;
    for (int restart = 0; restart < 4; restart++) {
        s = open_spool(dir, FSYNC_BATCH, &g);
        ck_assert_uint_eq(g.n, 1);
        ck_assert_uint_eq(g.m[0].seq, b);
        ck_assert_uint_le(count_segments(dir), 2);
        spool_close(s);
    }
    /* The same at run time: DONE records land in segments that empty and go. */
    s = open_spool(dir, FSYNC_BATCH, NULL);
    spool_set_segment_max(s, 4096);
    uint64_t c = add(s, 1, "c", "acked later");
    churn(s, 2);
    spool_done(s, c);
    churn(s, 4);
    ck_assert_uint_le(count_segments(dir), 3);
    spool_close(s);
    s = open_spool(dir, FSYNC_BATCH, &g);
    ck_assert_uint_eq(g.n, 1);
    ck_assert_uint_eq(g.m[0].seq, b);
    /* Nothing reuses the numbers of acknowledged messages. */
    ck_assert_uint_gt(add(s, 1, "d", "new"), c);
    spool_close(s);
}
END_TEST

static bool is_held(const uint64_t *held, uint16_t id)
{
    return held[id / 64] >> (id % 64) & 1;
}

static size_t n_held(const uint64_t *held)
{
    size_t n = 0;
    for (int i = 0; i < SPOOL_HELD_WORDS; i++) {
        n += (size_t)__builtin_popcountll(held[i]);
    }
    return n;
}

START_TEST(incoming_ids_survive_restarts_and_rotation)
{
    const char *dir = path_in(test_dir, "spool");
    Spool *s = open_spool(dir, FSYNC_BATCH, NULL);
    ck_assert_uint_eq(n_held(spool_incoming_held(s)), 0);
    ck_assert_int_eq(spool_incoming(s, 5, true), 0);
    ck_assert_int_eq(spool_incoming(s, 9, true), 0);
    ck_assert_int_eq(spool_incoming(s, 65535, true), 0);
    ck_assert_int_eq(spool_incoming(s, 5, false), 0);
    ck_assert_int_eq(spool_incoming(s, 0, true), -EINVAL);
    ck_assert(is_held(spool_incoming_held(s), 9));
    spool_close(s);
    s = open_spool(dir, FSYNC_BATCH, NULL);
    const uint64_t *held = spool_incoming_held(s);
    ck_assert_uint_eq(n_held(held), 2);
    ck_assert(is_held(held, 9) && is_held(held, 65535));
    /* Rotations delete every segment that had INCOMING records: the headers carry the set. */
    spool_set_segment_max(s, 4096);
    ck_assert_int_eq(spool_incoming(s, 1000, true), 0);
    churn(s, 5);
    ck_assert_int_eq(spool_incoming(s, 9, false), 0);
    churn(s, 5);
    spool_close(s);
    for (int restart = 0; restart < 3; restart++) {
        s = open_spool(dir, FSYNC_BATCH, NULL);
        held = spool_incoming_held(s);
        ck_assert_uint_eq(n_held(held), 2);
        ck_assert(is_held(held, 1000) && is_held(held, 65535));
        spool_close(s);
        ck_assert_uint_eq(count_segments(dir), 1); /* only the newest: nothing pending */
    }
    s = open_spool(dir, FSYNC_BATCH, NULL);
    ck_assert_int_eq(spool_incoming_clear(s), 0);
    ck_assert_uint_eq(n_held(spool_incoming_held(s)), 0);
    ck_assert_int_eq(spool_incoming(s, 7, true), 0);
    spool_close(s);
    s = open_spool(dir, FSYNC_BATCH, NULL);
    held = spool_incoming_held(s);
    ck_assert_uint_eq(n_held(held), 1);
    ck_assert(is_held(held, 7));
    spool_close(s);
}
END_TEST

typedef struct RecPos {
    uint64_t seq;
    size_t off, len;
} RecPos;

/* The ADD records of a segment file. */
static size_t add_positions(const Buf *b, RecPos *out, size_t max)
{
    SpoolReader rd;
    SpoolRecord r;
    size_t off, len, n = 0;
    ck_assert_int_eq(spool_reader_init(&rd, buf_view(b)), 0);
    int k;
    while ((k = spool_reader_next(&rd, &r, &off, &len)) == SPOOL_READ_RECORD) {
        if (r.type == SPOOL_ADD) {
            ck_assert_uint_lt(n, max);
            out[n++] = (RecPos){r.seq, off, len};
        }
    }
    ck_assert_int_eq(k, SPOOL_READ_END);
    return n;
}

#define MIDDLE 100000 /* damage_test: at the very middle of the file */

/* 300 messages in one segment; `bytes` bytes flipped `where` bytes into the record in the
 * middle of the file (negative: from its end). */
static void damage_test(long where, size_t bytes)
{
    const char *dir = path_in(test_dir, "spool");
    Spool *s = open_spool(dir, FSYNC_NEVER, NULL);
    char topic[32], payload[128];
    for (int i = 0; i < 300; i++) {
        snprintf(topic, sizeof(topic), "d/%d", i);
        snprintf(payload, sizeof(payload), "payload %d of a spool that will be damaged", i);
        add(s, 1 + i % 2, topic, payload);
    }
    spool_close(s);
    const char *seg = path_in(dir, "seg-0000000000000001.log");
    Buf b = read_all(seg);
    static RecPos pos[300];
    ck_assert_uint_eq(add_positions(&b, pos, 300), 300);
    size_t mid = b.len / 2, first = 0;
    while (pos[first].off + pos[first].len <= mid) {
        first++;
    }
    size_t at = where == MIDDLE ? mid
                : where < 0     ? pos[first].off + pos[first].len - (size_t)-where
                                : pos[first].off + (size_t)where;
    size_t last = first;
    while (pos[last].off + pos[last].len < at + bytes) {
        last++;
    }
    for (size_t i = 0; i < bytes; i++) {
        b.data[at + i] ^= 0x5a;
    }
    write_file(seg, buf_view(&b));
    static Got g;
    capture_begin();
    s = open_spool(dir, FSYNC_NEVER, &g);
    Buf log = capture_end();
    /* Exactly the damaged messages are lost. */
    ck_assert_uint_eq(g.n, 300 - (last - first + 1));
    for (size_t i = 0, k = 0; i < 300; i++) {
        if (i < first || i > last) {
            ck_assert_uint_eq(g.m[k++].seq, pos[i].seq);
        }
    }
    SpoolHealth h;
    spool_health(s, &h);
    ck_assert_uint_eq(h.damaged_regions, 1);
    ck_assert_uint_eq(h.damaged_bytes, pos[last].off + pos[last].len - pos[first].off);
    ck_assert_uint_eq(h.torn_bytes, 0);
    ck_assert(strstr((char *)log.data, "damaged region at offset"));
    ck_assert(strstr((char *)log.data, "damaged-seg-0000000000000001.log"));
    /* The damaged file is set aside as it was; the rest lives on in the new segment. */
    ck_assert(!exists(seg));
    Buf aside = read_all(path_in(dir, "damaged-seg-0000000000000001.log"));
    ck_assert_view_eq(buf_view(&aside), buf_view(&b));
    spool_close(s);
    static Got again;
    s = open_spool(dir, FSYNC_NEVER, &again);
    ck_assert_uint_eq(again.n, g.n);
    ck_assert_uint_eq(again.m[again.n - 1].seq, g.m[g.n - 1].seq);
    spool_health(s, &h);
    ck_assert_uint_eq(h.damaged_regions + h.damaged_bytes + h.torn_bytes, 0);
    spool_close(s);
    buf_free(&aside);
    buf_free(&log);
    buf_free(&b);
}

START_TEST(damage_in_the_middle_loses_only_what_it_hit)
{
    damage_test(MIDDLE, 8);
}
END_TEST

START_TEST(damage_to_a_payload)
{
    damage_test(36, 8);
}
END_TEST

START_TEST(damage_to_a_length_field)
{
    damage_test(4, 2); /* the record's length: resynchronised byte by byte */
}
END_TEST

START_TEST(damage_across_two_records)
{
    damage_test(-4, 8); /* the end of one record and the start of the next */
}
END_TEST

START_TEST(torn_tail_is_cut)
{
    const char *dir = path_in(test_dir, "spool");
    Spool *s = open_spool(dir, FSYNC_ALWAYS, NULL);
    for (int i = 0; i < 50; i++) {
        add(s, 1, "t", "payload");
    }
    spool_close(s);
    const char *seg = path_in(dir, "seg-0000000000000001.log");
    Buf b = read_all(seg);
    static RecPos pos[50];
    ck_assert_uint_eq(add_positions(&b, pos, 50), 50);
    ck_assert_int_eq(truncate(seg, (off_t)b.len - 5), 0);
    static Got g;
    s = open_spool(dir, FSYNC_ALWAYS, &g);
    ck_assert_uint_eq(g.n, 49);
    SpoolHealth h;
    spool_health(s, &h);
    ck_assert_uint_eq(h.torn_bytes, pos[49].len - 5);
    ck_assert_uint_eq(h.damaged_regions, 0);
    struct stat st;
    ck_assert_int_eq(stat(seg, &st), 0);
    ck_assert_uint_eq((uint64_t)st.st_size, pos[49].off);
    spool_close(s);
    /* Zeros after the last record (a power loss can leave those): cut too, nothing lost. */
    Buf z = read_all(seg);
    ck_assert_int_eq(buf_reserve(&z, 100), 0);
    memset(z.data + z.len, 0, 100);
    z.len += 100;
    write_file(seg, buf_view(&z));
    s = open_spool(dir, FSYNC_ALWAYS, &g);
    ck_assert_uint_eq(g.n, 49);
    spool_health(s, &h);
    ck_assert_uint_eq(h.torn_bytes, 100);
    spool_close(s);
    buf_free(&z);
    buf_free(&b);
}
END_TEST

START_TEST(waits_complete_in_order)
{
    const char *dir = path_in(test_dir, "spool");
    for (enum fsync_mode mode = FSYNC_ALWAYS; mode <= FSYNC_NEVER; mode++) {
        Spool *s = open_spool(dir, mode, NULL);
        static SpoolWait w[40];
        Durable d = {0};
        for (int i = 0; i < 40; i++) {
            uint64_t seq, mark;
            ck_assert_int_eq(spool_add(s,
                                       &(SpoolMessage){.qos = 1,
                                                       .retain = false,
                                                       .topic = VIEW_STR("w"),
                                                       .payload = VIEW_STR("x")},
                                       &seq, &mark),
                             0);
            spool_wait(s, &w[i], mark, on_durable, &d);
        }
        run_until(&d.calls, 30);
        uint64_t seq, mark;
        ck_assert_int_eq(spool_add(s,
                                   &(SpoolMessage){.qos = 1,
                                                   .retain = false,
                                                   .topic = VIEW_STR("w"),
                                                   .payload = VIEW_STR("x")},
                                   &seq, &mark),
                         0);
        SpoolWait last;
        spool_wait(s, &last, mark, on_durable, &d);
        spool_close(s); /* completes what is left */
        ck_assert_int_eq(d.calls, 41);
        ck_assert_int_eq(d.last_error, 0);
    }
}
END_TEST

START_TEST(sync_failure_fails_the_waits)
{
    const char *dir = path_in(test_dir, "spool");
    Spool *s = open_spool(dir, FSYNC_ALWAYS, NULL);
    Durable d = {0};
    SpoolWait w1, w2;
    uint64_t seq, mark;
    atomic_store(&fail_fdatasync, 1);
    capture_begin();
    ck_assert_int_eq(
        spool_add(s,
                  &(SpoolMessage){
                      .qos = 1, .retain = false, .topic = VIEW_STR("w"), .payload = VIEW_STR("x")},
                  &seq, &mark),
        0);
    spool_wait(s, &w1, mark, on_durable, &d);
    run_until(&d.calls, 1);
    ck_assert_int_eq(d.last_error, -EIO);
    SpoolHealth h;
    spool_health(s, &h);
    ck_assert_int_eq(h.write_error, EIO);
    atomic_store(&fail_fdatasync, 0);
    ck_assert_int_eq(
        spool_add(s,
                  &(SpoolMessage){
                      .qos = 1, .retain = false, .topic = VIEW_STR("w"), .payload = VIEW_STR("y")},
                  &seq, &mark),
        0);
    spool_wait(s, &w2, mark, on_durable, &d);
    run_until(&d.calls, 2);
    Buf log = capture_end();
    ck_assert_int_eq(d.last_error, 0);
    spool_health(s, &h);
    ck_assert_int_eq(h.write_error, 0);
    ck_assert_uint_eq(count_str(&log, "cannot sync"), 1);
    ck_assert_uint_eq(count_str(&log, "works again"), 1);
    spool_close(s);
    buf_free(&log);
}
END_TEST

START_TEST(failed_write_leaves_the_segment_as_it_was)
{
    const char *dir = path_in(test_dir, "spool");
    Spool *s = open_spool(dir, FSYNC_BATCH, NULL);
    add(s, 1, "a", "1");
    struct stat before, after;
    const char *seg = path_in(dir, "seg-0000000000000001.log");
    ck_assert_int_eq(stat(seg, &before), 0);
    fail_write = 2; /* half a record written, then EIO */
    uint64_t seq, mark;
    capture_begin();
    ck_assert_int_eq(
        spool_add(s,
                  &(SpoolMessage){
                      .qos = 1, .retain = false, .topic = VIEW_STR("b"), .payload = VIEW_STR("2")},
                  &seq, &mark),
        -EIO);
    ck_assert_int_eq(
        spool_add(s,
                  &(SpoolMessage){
                      .qos = 1, .retain = false, .topic = VIEW_STR("b"), .payload = VIEW_STR("2")},
                  &seq, &mark),
        -EIO);
    SpoolHealth h;
    spool_health(s, &h);
    ck_assert_int_eq(h.write_error, EIO);
    ck_assert_int_eq(stat(seg, &after), 0);
    ck_assert_int_eq(after.st_size, before.st_size);
    fail_write = 0;
    add(s, 1, "c", "3");
    Buf log = capture_end();
    ck_assert_uint_eq(count_str(&log, "cannot write to"), 1);
    ck_assert_uint_eq(count_str(&log, "works again"), 1);
    spool_health(s, &h);
    ck_assert_int_eq(h.write_error, 0);
    spool_close(s);
    static Got g;
    s = open_spool(dir, FSYNC_BATCH, &g);
    ck_assert_uint_eq(g.n, 2);
    ck_assert_str_eq(g.m[0].topic, "a");
    ck_assert_str_eq(g.m[1].topic, "c");
    spool_health(s, &h);
    ck_assert_uint_eq(h.torn_bytes + h.damaged_bytes, 0);
    spool_close(s);
    buf_free(&log);
}
END_TEST

START_TEST(segment_that_cannot_be_cut_back_is_retired)
{
    const char *dir = path_in(test_dir, "spool");
    Spool *s = open_spool(dir, FSYNC_NEVER, NULL);
    uint64_t a = add(s, 1, "a", "1");
    fail_write = 2;
    fail_ftruncate = 1;
    uint64_t seq, mark;
    ck_assert_int_eq(
        spool_add(s,
                  &(SpoolMessage){
                      .qos = 1, .retain = false, .topic = VIEW_STR("b"), .payload = VIEW_STR("2")},
                  &seq, &mark),
        -EIO);
    spool_done(s, a); /* its DONE cannot be written now: owed */
    fail_write = fail_ftruncate = 0;
    add(s, 1, "c", "3"); /* in segment 2, after the owed DONE */
    ck_assert(exists(path_in(dir, "seg-0000000000000002.log")));
    spool_close(s);
    static Got g;
    s = open_spool(dir, FSYNC_NEVER, &g);
    ck_assert_uint_eq(g.n, 1);
    ck_assert_str_eq(g.m[0].topic, "c");
    SpoolHealth h;
    spool_health(s, &h);
    ck_assert_uint_gt(h.torn_bytes, 0); /* the half record left in segment 1 */
    spool_close(s);
}
END_TEST

START_TEST(no_space_left)
{
    const char *mnt = path_in(test_dir, "small");
    ck_assert_int_eq(mkdir(mnt, 0700), 0);
    /* In a mount namespace of its own: the mount goes away with the test's process, whatever
     * happens to the test. */
    if (unshare(CLONE_NEWNS) < 0 || mount("none", "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0 ||
        mount("tmpfs", mnt, "tmpfs", 0, "size=64k") < 0) {
        fprintf(stderr, "no_space_left: skipped: cannot mount a tmpfs here (%s)\n",
                strerror(errno));
        return;
    }
    const char *ballast = path_in(mnt, "ballast");
    static char filler[24576];
    write_file(ballast, VIEW(filler, sizeof(filler)));
    const char *dir = path_in(mnt, "spool");
    Spool *s = open_spool(dir, FSYNC_BATCH, NULL);
    char payload[501];
    memset(payload, 'x', 500);
    payload[500] = 0;
    uint64_t seq, mark, first = 0;
    int r, ok = 0;
    capture_begin();
    while ((r = spool_add(s,
                          &(SpoolMessage){.qos = 1,
                                          .retain = false,
                                          .topic = VIEW_STR("full"),
                                          .payload = VIEW_STR(payload)},
                          &seq, &mark)) == 0) {
        first = first ? first : seq;
        ok++;
        ck_assert_int_lt(ok, 200);
    }
    ck_assert_int_eq(r, -ENOSPC);
    ck_assert_int_eq(spool_add(s,
                               &(SpoolMessage){.qos = 1,
                                               .retain = false,
                                               .topic = VIEW_STR("full"),
                                               .payload = VIEW_STR(payload)},
                               &seq, &mark),
                     -ENOSPC);
    SpoolHealth h;
    spool_health(s, &h);
    ck_assert_int_eq(h.write_error, ENOSPC);
    /* What is on disk reads back whole: no partial record. */
    Buf b = read_all(path_in(dir, "seg-0000000000000001.log"));
    static RecPos pos[200];
    ck_assert_uint_eq(add_positions(&b, pos, 200), (size_t)ok);
    buf_free(&b);
    ck_assert_int_eq(unlink(ballast), 0);
    add(s, 1, "full", "after");
    Buf log = capture_end();
    ck_assert_uint_eq(count_str(&log, "No space left on device; publishes that need the spool are "
                                      "refused until it can write again"),
                      1);
    ck_assert_uint_eq(count_str(&log, "works again"), 1);
    spool_health(s, &h);
    ck_assert_int_eq(h.write_error, 0);
    spool_done(s, first);
    spool_close(s);
    static Got g;
    s = open_spool(dir, FSYNC_BATCH, &g);
    ck_assert_uint_eq(g.n, (size_t)ok);
    ck_assert_mem_eq(g.m[g.n - 1].payload, "after", 5);
    spool_health(s, &h);
    ck_assert_uint_eq(h.torn_bytes + h.damaged_bytes, 0);
    spool_close(s);
    buf_free(&log);
    ck_assert_int_eq(umount2(mnt, MNT_DETACH), 0);
}
END_TEST

/* ---- named local sessions ---- */

START_TEST(session_records_round_trip)
{
    Buf subs = {0}, b = {0};
    ck_assert_int_eq(spool_session_sub_put(&subs, &(SpoolSessionSub){.qos = 1,
                                                                     .base64 = true,
                                                                     .subid = 268435455,
                                                                     .filter = VIEW_STR("a/#")}),
                     0);
    ck_assert_int_eq(spool_session_sub_put(&subs, &(SpoolSessionSub){.qos = 2,
                                                                     .no_local = true,
                                                                     .retain_as_published = true,
                                                                     .filter = VIEW_STR("b")}),
                     0);
    ck_assert_int_eq(spool_session_sub_put(&subs, &(SpoolSessionSub){.qos = 1}), -E2BIG);
    SpoolSession m = {.id = 9,
                      .name = VIEW_STR("billing"),
                      .uid = 1000,
                      .expiry = 3600,
                      .left_at = 1700000000123,
                      .next_seq = 42,
                      .acked = 7,
                      .dropped = 3,
                      .dropped_total = 11,
                      .subs = buf_view(&subs)};
    ck_assert_int_eq(spool_record_session(&b, 5, &m), 0);
    ck_assert_int_eq(spool_record_session_ack(&b, 5, 9, 41), 0);
    ck_assert_int_eq(spool_record_session_ack(&b, 5, 9, 0), -EINVAL);
    SpoolRecord k = {.session = 9,
                     .session_seq = 41,
                     .kept_at = 1700000000456,
                     .qos = 2,
                     .retain = true,
                     .base64 = true,
                     .topic = VIEW_STR("a/x"),
                     .payload = VIEW("\0p", 2),
                     .props = VIEW("\x01\x01", 2)};
    ck_assert_int_eq(spool_record_kept(&b, 5, 77, &k), 0);
    k.session = 0;
    ck_assert_int_eq(spool_record_kept(&b, 5, 78, &k), -EINVAL);

    SpoolRecord r;
    View in = buf_view(&b);
    ck_assert_int_eq(spool_record_parse(in, 5, &r), 1);
    ck_assert_int_eq(r.type, SPOOL_SESSION);
    ck_assert_uint_eq(r.sess.id, 9);
    ck_assert_view_str(r.sess.name, "billing");
    ck_assert_uint_eq(r.sess.uid, 1000);
    ck_assert_uint_eq(r.sess.expiry, 3600);
    ck_assert_int_eq(r.sess.left_at, 1700000000123);
    ck_assert_uint_eq(r.sess.next_seq, 42);
    ck_assert_uint_eq(r.sess.acked, 7);
    ck_assert_uint_eq(r.sess.dropped, 3);
    ck_assert_uint_eq(r.sess.dropped_total, 11);
    View list = r.sess.subs;
    SpoolSessionSub sub;
    ck_assert_int_eq(spool_session_sub_next(&list, &sub), 1);
    ck_assert(sub.qos == 1 && sub.base64 && !sub.no_local && !sub.retain_as_published);
    ck_assert_uint_eq(sub.subid, 268435455);
    ck_assert_view_str(sub.filter, "a/#");
    ck_assert_int_eq(spool_session_sub_next(&list, &sub), 1);
    ck_assert(sub.qos == 2 && !sub.base64 && sub.no_local && sub.retain_as_published);
    ck_assert_uint_eq(sub.subid, 0);
    ck_assert_view_str(sub.filter, "b");
    ck_assert_int_eq(spool_session_sub_next(&list, &sub), 0);
    in = VIEW(in.p + r.size, in.n - r.size);
    ck_assert_int_eq(spool_record_parse(in, 5, &r), 1);
    ck_assert_int_eq(r.type, SPOOL_SESSION_ACK);
    ck_assert_uint_eq(r.sess.id, 9);
    ck_assert_uint_eq(r.sess.acked, 41);
    ck_assert_uint_eq(r.size, SPOOL_ACK_SIZE);
    in = VIEW(in.p + r.size, in.n - r.size);
    ck_assert_int_eq(spool_record_parse(in, 5, &r), 1);
    ck_assert_int_eq(r.type, SPOOL_KEPT);
    ck_assert_uint_eq(r.seq, 77);
    ck_assert_uint_eq(r.session, 9);
    ck_assert_uint_eq(r.session_seq, 41);
    ck_assert_int_eq(r.kept_at, 1700000000456);
    ck_assert(r.qos == 2 && r.retain && r.base64);
    ck_assert_view_str(r.topic, "a/x");
    ck_assert_view_eq(r.payload, VIEW("\0p", 2));
    ck_assert_view_eq(r.props, VIEW("\x01\x01", 2));
    ck_assert_uint_eq(r.size, in.n);

    /* A subscription list that runs past its end, or flags no writer sets, is damage. */
    b.len = 0;
    subs.data[1] = 8;
    ck_assert_int_eq(spool_record_session(&b, 5, &m), 0);
    ck_assert_int_eq(spool_record_parse(buf_view(&b), 5, &r), -EBADMSG);
    subs.data[1] = 1;
    subs.data[6] = 200; /* the filter's length */
    b.len = 0;
    ck_assert_int_eq(spool_record_session(&b, 5, &m), 0);
    ck_assert_int_eq(spool_record_parse(buf_view(&b), 5, &r), -EBADMSG);
    buf_free(&subs);
    buf_free(&b);
}
END_TEST

START_TEST(session_records_only_in_format_4)
{
    Buf b = segment(7, 0);
    b.data[SPOOL_HEADER_VERSION] = 3;
    spool_record_reseal(b.data, SPOOL_HEADER_MIN, 0);
    ck_assert_int_eq(spool_record_session_ack(&b, 7, 9, 1), 0);
    SpoolReader rd;
    SpoolRecord r;
    size_t off, len;
    ck_assert_int_eq(spool_reader_init(&rd, buf_view(&b)), 0);
    ck_assert_int_eq(spool_reader_next(&rd, &r, &off, &len), SPOOL_READ_RECORD);
    ck_assert_int_eq(spool_reader_next(&rd, &r, &off, &len), SPOOL_READ_TORN);
    buf_free(&b);
}
END_TEST

/* A session with these subscriptions ("qos:flags:filter " each, as on_session prints them). */
static uint64_t put_session(Spool *s, uint64_t id, const char *name, uint32_t expiry,
                            const char *filters)
{
    Buf subs = {0};
    char f[64];
    int n, at = 0;
    unsigned qos, base64, nl, rap;
    while (sscanf(filters + at, "%u:%1u%1u%1u:%63s %n", &qos, &base64, &nl, &rap, f, &n) == 5) {
        at += n;
        SpoolSessionSub sub = {.qos = (uint8_t)qos,
                               .base64 = base64,
                               .no_local = nl,
                               .retain_as_published = rap,
                               .subid = 100 + (uint32_t)at,
                               .filter = VIEW_STR(f)};
        ck_assert_int_eq(spool_session_sub_put(&subs, &sub), 0);
    }
    SpoolSession m = {.id = id,
                      .name = VIEW_STR(name),
                      .uid = 1000,
                      .expiry = expiry,
                      .next_seq = 5,
                      .subs = buf_view(&subs)};
    ck_assert_int_eq(spool_session_put(s, &m), 0);
    ck_assert_uint_ne(m.id, 0);
    ck_assert(!id || m.id == id);
    buf_free(&subs);
    return m.id;
}

static uint64_t keep(Spool *s, uint64_t session, uint64_t session_seq, const char *topic)
{
    uint64_t seq, mark;
    SpoolMessage m = {.qos = 1,
                      .topic = VIEW_STR(topic),
                      .payload = VIEW_STR(topic),
                      .session = session,
                      .session_seq = session_seq,
                      .kept_at = 1700000000000 + (int64_t)session_seq,
                      .base64 = true};
    ck_assert_int_eq(spool_add(s, &m, &seq, &mark), 0);
    return seq;
}

START_TEST(sessions_survive_restarts_and_compaction)
{
    const char *dir = path_in(test_dir, "spool");
    Spool *s = open_spool(dir, FSYNC_NEVER, NULL);
    spool_set_segment_max(s, 8192);
    uint64_t billing = put_session(s, 0, "billing", 60, "1:100:a/# ");
    uint64_t k1 = keep(s, billing, 5, "a/1"), q = add(s, 1, "queued", "q");
    keep(s, billing, 6, "a/2");
    keep(s, billing, 7, "a/3");
    uint64_t other = put_session(s, 0, "other", 0, "0:000:o ");
    uint64_t orphan = keep(s, other, 1, "o");
    ck_assert_uint_eq(spool_pending(s), 1); /* the broker's queue only */
    ck_assert_int_eq(spool_session_ack(s, billing, 5), 0);
    spool_done(s, k1);
    spool_done(s, other); /* ended; its message's DONE "lost" */
    churn(s, 3);
    ck_assert_int_eq(put_session(s, billing, "billing", 120, "1:100:a/# 2:011:b "), billing);
    ck_assert_int_eq(spool_session_ack(s, 9999, 1), -ENOENT);
    churn(s, 6);
    /* Segment 1 (the sessions, the messages, the first ack) was compacted away. */
    ck_assert(!exists(path_in(dir, "seg-0000000000000001.log")));
    spool_close(s);
    static Got g;
    for (int again = 0; again < 2; again++) {
        s = open_spool(dir, FSYNC_NEVER, &g);
        ck_assert_uint_eq(g.n_sessions, 1);
        ck_assert_uint_eq(g.sess[0].id, billing);
        ck_assert_str_eq(g.sess[0].name, "billing");
        ck_assert_uint_eq(g.sess[0].uid, 1000);
        ck_assert_uint_eq(g.sess[0].expiry, 120);
        ck_assert_uint_eq(g.sess[0].acked, 5);
        ck_assert_uint_eq(g.sess[0].next_seq, 5);
        ck_assert_str_eq(g.sess[0].subs, "1:100:a/# 2:011:b ");
        ck_assert_uint_eq(g.n, 4);
        ck_assert_uint_eq(g.m[0].seq, q);
        ck_assert_uint_eq(g.m[0].session, 0);
        for (int i = 1; i <= 2; i++) {
            ck_assert_uint_eq(g.m[i].session, billing);
            ck_assert_uint_eq(g.m[i].session_seq, 5 + (uint64_t)i);
            ck_assert_int_eq(g.m[i].kept_at, 1700000000005 + i);
            ck_assert(g.m[i].base64);
        }
        ck_assert_str_eq(g.m[1].topic, "a/2");
        ck_assert_str_eq(g.m[2].topic, "a/3");
        /* The caller forgets a message whose session did not come back. */
        ck_assert_uint_eq(g.m[3].seq, orphan);
        ck_assert_uint_eq(g.m[3].session, other);
        if (again) {
            spool_done(s, orphan);
        }
        spool_close(s);
    }
    s = open_spool(dir, FSYNC_NEVER, &g);
    ck_assert_uint_eq(g.n, 3);
    /* Ending the session forgets it; its messages' DONEs go first, as sessions.c writes them. */
    spool_done(s, g.m[1].seq);
    spool_done(s, g.m[2].seq);
    spool_done(s, billing);
    churn(s, 6);
    spool_close(s);
    s = open_spool(dir, FSYNC_NEVER, &g);
    ck_assert_uint_eq(g.n_sessions, 0);
    ck_assert_uint_eq(g.n, 1);
    spool_close(s);
}
END_TEST

/* A session rewritten, acknowledged or ended while a compaction copies its SESSION record:
 * what was written after the snapshot wins, at once and after a restart. */
START_TEST(session_changed_during_its_compaction)
{
    for (int end = 0; end < 2; end++) {
        char dir[300];
        snprintf(dir, sizeof(dir), "%s/spool-%d", test_dir, end);
        Spool *s = open_spool(dir, FSYNC_BATCH, NULL);
        spool_set_segment_max(s, 4096);
        uint64_t id = put_session(s, 0, "busy", 10, "1:000:old ");
        ck_assert_int_eq(spool_session_ack(s, id, 3), 0);
        fill_segment_1(s, dir);
        churn_one(s); /* rotates: segment 1 (the session) is being copied */
        ck_assert(spool_compacting(s));
        if (end) {
            spool_done(s, id);
        } else {
            put_session(s, id, "busy", 20, "2:000:new ");
            ck_assert_int_eq(spool_session_ack(s, id, 4), 0);
        }
        settle_compaction(s);
        churn(s, 2);
        spool_close(s);
        static Got g;
        s = open_spool(dir, FSYNC_BATCH, &g);
        if (end) {
            ck_assert_uint_eq(g.n_sessions, 0);
        } else {
            ck_assert_uint_eq(g.n_sessions, 1);
            ck_assert_uint_eq(g.sess[0].expiry, 20);
            ck_assert_uint_eq(g.sess[0].acked, 4);
            ck_assert_str_eq(g.sess[0].subs, "2:000:new ");
        }
        spool_close(s);
    }
}
END_TEST

START_TEST(spool_is_exclusive)
{
    const char *dir = path_in(test_dir, "spool");
    Spool *s = open_spool(dir, FSYNC_NEVER, NULL), *t = NULL;
    static Got g;
    ck_assert_int_eq(spool_open_got(loop, dir, FSYNC_NEVER, &g, &t), -EBUSY);
    ck_assert_ptr_null(t);
    spool_close(s);
}
END_TEST

static Suite *spool_suite(void)
{
    Suite *s = suite_create("spool");
    TCase *tc = tcase_create("record");
    tcase_add_test(tc, crc32_vector);
    tcase_add_test(tc, round_trip);
    tcase_add_test(tc, format2_round_trip);
    tcase_add_test(tc, torn_at_every_length);
    tcase_add_test(tc, every_flipped_bit_is_caught);
    tcase_add_test(tc, reader_skips_damage_and_finds_torn_tails);
    tcase_add_test(tc, reader_never_takes_a_foreign_record);
    tcase_add_test(tc, reader_refuses_a_newer_format);
    tcase_add_test(tc, add5_and_format2_segments);
    tcase_add_test(tc, session_records_round_trip);
    tcase_add_test(tc, session_records_only_in_format_4);
    suite_add_tcase(s, tc);
    tc = tcase_create("spool");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, fixture_v1);
    tcase_add_test(tc, newer_format_is_refused);
    tcase_add_test(tc, new_segments_have_a_header);
    tcase_add_test(tc, send_state_round_trip);
    tcase_add_test(tc, send_state_survives_compaction);
    tcase_add_test(tc, incoming_ids_survive_restarts_and_rotation);
    tcase_add_test(tc, acknowledged_stays_acknowledged);
    tcase_add_test(tc, compaction_beside_writes);
    tcase_add_test(tc, kill_before_the_first_copy);
    tcase_add_test(tc, kill_between_copies);
    tcase_add_test(tc, kill_before_the_copies_are_synced);
    tcase_add_test(tc, close_abandons_a_compaction);
    tcase_add_test(tc, compaction_sync_failure_keeps_the_originals);
    tcase_add_test(tc, damage_in_the_middle_loses_only_what_it_hit);
    tcase_add_test(tc, damage_to_a_payload);
    tcase_add_test(tc, damage_to_a_length_field);
    tcase_add_test(tc, damage_across_two_records);
    tcase_add_test(tc, torn_tail_is_cut);
    tcase_add_test(tc, waits_complete_in_order);
    tcase_add_test(tc, sync_failure_fails_the_waits);
    tcase_add_test(tc, failed_write_leaves_the_segment_as_it_was);
    tcase_add_test(tc, segment_that_cannot_be_cut_back_is_retired);
    tcase_add_test(tc, no_space_left);
    tcase_add_test(tc, spool_is_exclusive);
    tcase_add_test(tc, sessions_survive_restarts_and_compaction);
    tcase_add_test(tc, session_changed_during_its_compaction);
    suite_add_tcase(s, tc);
    return s;
}

CHECK_MAIN(spool_suite)

/* SPDX-License-Identifier: MIT */
/*
 * Unit tests of the connection layer (daemon/server.c) with a fake request layer above it,
 * over a real Unix socket and a private libev loop, and of the peer-name cache
 * (daemon/names.c) with its real helper thread.
 */
#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "names.h"
#include "server.h"
#include "testutil.h"

/* ---- a fake request layer ---- */

typedef struct TConn {
    Conn conn;
    int lines, overlong, gone;
    char last[2048];
    bool owe;
} TConn;

static int admit_answer; /* what admit returns */
static int released;
static TConn *last_conn;

static int t_admit(Conn *k, enum ipc_error *code, char *why, size_t n)
{
    last_conn = (TConn *)k;
    *code = IPC_FORBIDDEN;
    snprintf(why, n, "no test peers today");
    return admit_answer;
}

static char order[512]; /* the first byte of each line served, in order */
static size_t n_order;

static void t_line(Conn *k, View line)
{
    TConn *t = (TConn *)k;
    t->lines++;
    if (n_order < sizeof(order)) {
        order[n_order++] = (char)line.p[0];
    }
    snprintf(t->last, sizeof(t->last), "%.*s", (int)line.n, (const char *)line.p);
}

static void t_overlong(Conn *k, size_t max)
{
    ck_assert_uint_eq(max, 1024);
    ((TConn *)k)->overlong++;
}

static bool t_owes(const Conn *k)
{
    return ((const TConn *)k)->owe;
}

static void t_gone(Conn *k)
{
    ((TConn *)k)->gone++;
}

static void t_release(Conn *k)
{
    ck_assert(k->closed);
    released++;
}

static const ServerCallbacks cb = {.conn_size = sizeof(TConn),
                                   .admit = t_admit,
                                   .line = t_line,
                                   .overlong = t_overlong,
                                   .owes = t_owes,
                                   .gone = t_gone,
                                   .release = t_release};

static struct ev_loop *loop;
static Config cfg;
static Server srv;
static char dir[64], path[96];

static void setup(void)
{
    loop = ev_loop_new(EVFLAG_AUTO);
    ck_assert_ptr_nonnull(loop);
    ck_assert_int_eq(config_init(&cfg), 0);
    snprintf(dir, sizeof(dir), "/tmp/mqttbridge-test-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/s.sock", dir);
    free(cfg.ipc.socket);
    cfg.ipc.socket = strdup(path);
    cfg.ipc.max_line = 1024;
    cfg.ipc.client_buffer = 4096;
    cfg.ipc.max_clients = 2;
    admit_answer = 0;
    released = 0;
    last_conn = NULL;
    n_order = 0;
    ck_assert_int_eq(server_start(&srv, loop, &cfg, &cb, NULL), 0);
}

static void teardown(void)
{
    server_stop(&srv);
    config_free(&cfg);
    ev_loop_destroy(loop);
    ck_assert_int_eq(rmdir(dir), 0); /* the socket file is gone */
}

static bool timed_out;

static void on_bound(struct ev_loop *l, ev_timer *w, int revents)
{
    (void)w;
    (void)revents;
    timed_out = true;
    ev_break(l, EVBREAK_ONE);
}

static void on_stopper(struct ev_loop *l, ev_prepare *w, int revents)
{
    (void)w;
    (void)revents;
    ev_break(l, EVBREAK_ONE);
}

/* One turn of the loop: its prepare watchers (where closed connections are freed) run, and
 * it stops before it would wait. */
static void run_prepares(void)
{
    ev_prepare stopper;
    ev_prepare_init(&stopper, on_stopper);
    ev_set_priority(&stopper, EV_MINPRI);
    ev_prepare_start(loop, &stopper);
    ev_run(loop, 0);
    ev_prepare_stop(loop, &stopper);
}

/* Conditions another thread changes (the names helper) have no event of their own. */
static void on_wake(struct ev_loop *l, ev_timer *w, int revents)
{
    (void)l, (void)w, (void)revents;
}

/* Run the loop until cond holds (checked whenever the loop would wait, and every 10 ms), at
 * most 5 s. */
#define RUN_UNTIL(cond)                                                                            \
    do {                                                                                           \
        ev_timer bound_, wake_;                                                                    \
        timed_out = false;                                                                         \
        ev_timer_init(&bound_, on_bound, 5.0, 0.0);                                                \
        ev_timer_start(loop, &bound_);                                                             \
        ev_timer_init(&wake_, on_wake, 0.01, 0.01);                                                \
        ev_timer_start(loop, &wake_);                                                              \
        for (run_prepares(); !(cond) && !timed_out; run_prepares()) {                              \
            ev_run(loop, EVRUN_ONCE);                                                              \
        }                                                                                          \
        ev_timer_stop(loop, &bound_);                                                              \
        ev_timer_stop(loop, &wake_);                                                               \
        ck_assert_msg(cond, "timed out waiting for " #cond);                                       \
    } while (0)

/* Let the loop handle whatever is ready now, without waiting. */
static void run_ready(void)
{
    for (int i = 0; i < 5; i++) {
        ev_run(loop, EVRUN_NOWAIT);
    }
}

static int peer(void)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ck_assert_int_ge(fd, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof(a.sun_path), "%s", path);
    ck_assert_int_eq(connect(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    return fd;
}

static void put(int fd, const char *s)
{
    ck_assert_int_eq(write(fd, s, strlen(s)), (ssize_t)strlen(s));
}

static bool readable(int fd)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    return poll(&p, 1, 0) > 0;
}

/* Everything the server writes to fd until it closes (bounded by the loop's own bound). */
static size_t drain(int fd, char *out, size_t cap)
{
    size_t n = 0;
    for (;;) {
        ssize_t r = recv(fd, out + n, cap - 1 - n, MSG_DONTWAIT);
        if (r > 0) {
            n += (size_t)r;
            continue;
        }
        if (r == 0) {
            break;
        }
        ck_assert_int_eq(errno, EAGAIN);
        RUN_UNTIL(readable(fd));
    }
    out[n] = 0;
    return n;
}

/* Lines are handed up one by one (blank ones skipped); a peer that shuts down its side
 * and is owed nothing is closed, and freed outside its callback. */
START_TEST(lines_then_eof)
{
    int fd = peer();
    put(fd, "first\n\nsecond\n");
    RUN_UNTIL(last_conn && last_conn->lines == 2);
    ck_assert_str_eq(last_conn->last, "second");
    ck_assert_uint_eq(srv.n_conns, 1);
    ck_assert_uint_eq(srv.accepted, 1);
    ck_assert_int_eq(shutdown(fd, SHUT_WR), 0);
    RUN_UNTIL(released == 1);
    char buf[64];
    ck_assert_uint_eq(drain(fd, buf, sizeof(buf)), 0);
    ck_assert_uint_eq(srv.n_conns, 0);
    close(fd);
}
END_TEST

/* A half-closed peer that is still owed an answer stays until it has it. */
START_TEST(owed_answer_after_eof)
{
    int fd = peer();
    put(fd, "q\n");
    RUN_UNTIL(last_conn && last_conn->lines == 1);
    TConn *t = last_conn;
    t->owe = true;
    ck_assert_int_eq(shutdown(fd, SHUT_WR), 0);
    RUN_UNTIL(t->conn.eof);
    run_ready();
    ck_assert(!t->conn.closed);
    t->owe = false;
    conn_send(&t->conn, VIEW_STR("answer\n"));
    conn_finish_if_done(&t->conn); /* queued bytes go first */
    ck_assert(!t->conn.closed);
    char buf[64];
    drain(fd, buf, sizeof(buf));
    ck_assert_str_eq(buf, "answer\n");
    RUN_UNTIL(released == 1);
    close(fd);
}
END_TEST

/* A line longer than max_line is reported and skipped; the next one still arrives. */
START_TEST(overlong_line_skipped)
{
    int fd = peer();
    char big[3000];
    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = 0;
    put(fd, big);
    put(fd, "\nok\n");
    RUN_UNTIL(last_conn && last_conn->lines == 1);
    ck_assert_int_eq(last_conn->overlong, 1);
    ck_assert_str_eq(last_conn->last, "ok");
    close(fd);
}
END_TEST

/* A client with many requests waiting gets a bounded turn per loop iteration: another
 * client's request is served before the first one's backlog is through; the backlog is all
 * served in order, and a client that leaves with lines waiting is closed cleanly. */
START_TEST(turns)
{
    int a = peer();
    RUN_UNTIL(last_conn);
    TConn *ta = last_conn;
    char burst[200 * 2 + 1] = "";
    for (int i = 0; i < 200; i++) {
        strcat(burst, "a\n");
    }
    put(a, burst);
    RUN_UNTIL(ta->lines > 0); /* its first turn */
    ck_assert_int_lt(ta->lines, 200);
    ck_assert(ta->conn.waiting);
    int b = peer();
    RUN_UNTIL(last_conn != ta);
    put(b, "b\n");
    RUN_UNTIL(ta->lines == 200 && last_conn->lines == 1);
    char *at = memchr(order, 'b', n_order);
    ck_assert_ptr_nonnull(at);
    ck_assert_int_lt(at - order, 200); /* before the end of a's backlog */
    ck_assert(!ta->conn.waiting);
    put(a, burst);
    RUN_UNTIL(ta->lines > 200);
    close(a); /* gone with lines waiting */
    RUN_UNTIL(released == 1);
    close(b);
}
END_TEST

/* Past client_buffer queued toward a peer, its requests are not read until it catches up. */
START_TEST(back_pressure)
{
    int fd = peer();
    put(fd, "hello\n");
    RUN_UNTIL(last_conn && last_conn->lines == 1);
    TConn *t = last_conn;
    int small = 4096;
    ck_assert_int_eq(setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small)), 0);
    static char chunk[1000];
    memset(chunk, 'm', sizeof(chunk));
    while (conn_queued(&t->conn) <= cfg.ipc.client_buffer) {
        conn_send(&t->conn, VIEW(chunk, sizeof(chunk)));
        run_ready(); /* the socket takes what it can */
    }
    put(fd, "later\n");
    run_ready();
    ck_assert_int_eq(t->lines, 1); /* not read while the backlog is over the limit */
    size_t got = 0;
    char buf[65536];
    while (t->lines < 2) {
        ssize_t r = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
        got += r > 0 ? (size_t)r : 0;
        ev_run(loop, EVRUN_NOWAIT);
        ck_assert_uint_lt(got, 100u << 20);
    }
    ck_assert_str_eq(t->last, "later");
    close(fd);
}
END_TEST

/* Admission that ends later: nothing is read before it; a refusal tells the peer why. */
START_TEST(admission_later)
{
    admit_answer = 1;
    int fd = peer();
    put(fd, "early\n");
    RUN_UNTIL(last_conn != NULL);
    TConn *t = last_conn;
    run_ready();
    ck_assert_int_eq(t->lines, 0);
    conn_admit(&t->conn);
    RUN_UNTIL(t->lines == 1);
    ck_assert_str_eq(t->last, "early");

    last_conn = NULL;
    int fd2 = peer();
    RUN_UNTIL(last_conn != NULL);
    conn_refuse(&last_conn->conn, IPC_FORBIDDEN, "not you");
    char buf[512];
    drain(fd2, buf, sizeof(buf));
    ck_assert_ptr_nonnull(strstr(buf, "\"forbidden\""));
    ck_assert_ptr_nonnull(strstr(buf, "not you"));
    ck_assert_uint_eq(srv.rejected, 1);
    ck_assert_uint_eq(srv.accepted, 1);
    close(fd);
    close(fd2);
}
END_TEST

/* Refused at once (admit < 0), past max_clients, and while stopping: each told why. */
START_TEST(refusals)
{
    char buf[512];
    admit_answer = -EPERM;
    int fd = peer();
    drain(fd, buf, sizeof(buf));
    ck_assert_ptr_nonnull(strstr(buf, "no test peers today"));
    close(fd);
    RUN_UNTIL(released == 1);

    admit_answer = 0;
    int a = peer(), b = peer(), c = peer();
    drain(c, buf, sizeof(buf));
    ck_assert_ptr_nonnull(strstr(buf, "ipc.max_clients = 2"));
    ck_assert_uint_eq(srv.n_conns, 2);
    server_refuse_new(&srv);
    int d = peer();
    drain(d, buf, sizeof(buf));
    ck_assert_ptr_nonnull(strstr(buf, "shutting_down"));
    ck_assert_uint_eq(srv.rejected, 3);
    close(a);
    close(b);
    close(c);
    close(d);
}
END_TEST

/* ---- peer names ---- */

typedef struct TWait {
    NameWait w;
    int calls;
    char name[64];
    bool none;
} TWait;

static void on_name(NameWait *w, const char *name)
{
    TWait *t = container_of(w, TWait, w);
    t->calls++;
    t->none = !name;
    snprintf(t->name, sizeof(t->name), "%s", name ? name : "");
}

/* The first look-up of a uid answers later (from the thread), the next at once from the
 * cache; two waiters share one look-up; a cancelled one is not called; no such user: NULL. */
START_TEST(names_cached)
{
    Names n;
    names_init(&n, loop);
    TWait a = {0}, b = {0}, gone = {0};
    name_wait_init(&a.w);
    name_wait_init(&b.w);
    name_wait_init(&gone.w);
    const char *name = "unset";
    ck_assert_int_eq(names_lookup(&n, 0, &name, &a.w, on_name), 1);
    ck_assert_int_eq(names_lookup(&n, 0, &name, &b.w, on_name), 1);
    ck_assert_int_eq(names_lookup(&n, 0, &name, &gone.w, on_name), 1);
    names_cancel(&gone.w);
    ck_assert_uint_eq(n.lookups, 1);
    RUN_UNTIL(a.calls && b.calls);
    ck_assert_str_eq(a.name, "root");
    ck_assert_str_eq(b.name, "root");
    ck_assert_int_eq(gone.calls, 0);
    ck_assert_uint_eq(n.in_flight, 0);

    TWait c = {0};
    name_wait_init(&c.w);
    ck_assert_int_eq(names_lookup(&n, 0, &name, &c.w, on_name), 0);
    ck_assert_str_eq(name, "root");
    ck_assert_uint_eq(n.lookups, 1);

    TWait none = {0};
    name_wait_init(&none.w);
    ck_assert_int_eq(names_lookup(&n, 4000000000u, &name, &none.w, on_name), 1);
    RUN_UNTIL(none.calls == 1);
    ck_assert(none.none);
    ck_assert_int_eq(names_lookup(&n, 4000000000u, &name, &none.w, on_name), 0);
    ck_assert_ptr_null(name);
    names_free(&n);
}
END_TEST

/* Freeing the cache while a lookup runs: the thread finishes on its own and frees its job
 * (LeakSanitizer and ASan watch), and never signals the loop again. */
START_TEST(names_free_while_looking_up)
{
    Names n;
    names_init(&n, loop);
    TWait a = {0};
    name_wait_init(&a.w);
    const char *name;
    ck_assert_int_eq(names_lookup(&n, 0, &name, &a.w, on_name), 1);
    ck_assert_uint_eq(n.in_flight, 1);
    names_free(&n);
    RUN_UNTIL(names_threads() == 0);
    run_ready();
    ck_assert_int_eq(a.calls, 0);
}
END_TEST

static Suite *server_suite(void)
{
    Suite *s = suite_create("server");
    TCase *tc = tcase_create("server");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, lines_then_eof);
    tcase_add_test(tc, owed_answer_after_eof);
    tcase_add_test(tc, overlong_line_skipped);
    tcase_add_test(tc, back_pressure);
    tcase_add_test(tc, turns);
    tcase_add_test(tc, admission_later);
    tcase_add_test(tc, refusals);
    tcase_add_test(tc, names_cached);
    tcase_add_test(tc, names_free_while_looking_up);
    suite_add_tcase(s, tc);
    return s;
}

CHECK_MAIN(server_suite)

/* SPDX-License-Identifier: MIT */
/*
 * Unit tests of the daemon's subscription owner (daemon/subs.c) and waiter lifecycle
 * (daemon/waiters.c), with fakes for everything around them: no sockets, no broker. The
 * connection layer's calls and the replies are recorded; the session is the real sans-I/O one,
 * fed broker packets by the test, and its events are routed as bridge.c routes them. Timers
 * run on a private libev loop.
 */
#include <errno.h>
#include <stdarg.h>

#include "answer.h"
#include "subs.h"
#include "testutil.h"
#include "waiters.h"

/* ---- fakes: what the layers below and beside would do ---- */

typedef struct Said {
    Client *c;
    char text[600];
} Said;

static Said said[64];
static size_t n_said;

static void say(Client *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void say(Client *c, const char *fmt, ...)
{
    ck_assert_uint_lt(n_said, 64);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(said[n_said].text, sizeof(said[n_said].text), fmt, ap);
    va_end(ap);
    said[n_said++].c = c;
}

void answer_ok(Client *c, json_t *id, json_t *fields)
{
    char *f = fields ? json_dumps(fields, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    say(c, "ok %lld %s", id ? (long long)json_integer_value(id) : -1LL, f ? f : "");
    free(f);
    json_decref(fields);
}

void answer_error(Client *c, json_t *id, enum ipc_error code, const char *fmt, ...)
{
    (void)fmt;
    say(c, "error %lld %s", id ? (long long)json_integer_value(id) : -1LL, ipc_error_code(code));
}

void answer_refused(Client *c, json_t *id, const Waiter *w, const char *fmt, ...)
{
    (void)fmt;
    say(c, "error %lld refused %d", id ? (long long)json_integer_value(id) : -1LL, (int)w->reason);
}

void answer_cannot_wait(Client *c, json_t *id, size_t needed)
{
    say(c, "cannot_wait %lld %zu", id ? (long long)json_integer_value(id) : -1LL, needed);
}

void answer_unsubscribed(Client *c, View filter, const char *reason)
{
    (void)reason;
    say(c, "unsubscribed %.*s", (int)filter.n, (const char *)filter.p);
}

/* As server.c and ops.c's gone callback would. */
void conn_close(Conn *k, const char *why)
{
    (void)why;
    if (k->closed) {
        return;
    }
    k->closed = true;
    dlist_remove(&k->link);
    subs_client_gone(client_of(k));
    waiters_client_gone(client_of(k));
}

void conn_send(Conn *k, View bytes)
{
    (void)k;
    (void)bytes;
}

void conn_finish_if_done(Conn *k)
{
    (void)k;
}

void spool_wait_cancel(SpoolWait *w)
{
    (void)w;
}

int64_t now_ms(void)
{
    return 1000000;
}

/* ---- the harness: a daemon with a connected session ---- */

static Daemon d;
static MqttDecoder wire; /* what the session wrote */

/* As bridge.c routes them. */
static void on_event(void *ud, const SessionEvent *ev)
{
    (void)ud;
    if ((ev->type == SESSION_EV_SUBSCRIBE_DONE || ev->type == SESSION_EV_UNSUBSCRIBE_DONE ||
         ev->type == SESSION_EV_BARRIER_DONE) &&
        ev->done.req) {
        waiter_complete(ev->done.req, ev->done.result);
    } else if (ev->type == SESSION_EV_SUBSCRIPTION_LOST) {
        subs_lost(&d, ev->lost.filter, ev->lost.code);
    } else if (ev->type == SESSION_EV_LINK_DOWN) {
        buf_clear(&d.broker.session->out);
        subs_link_down(&d);
    }
}

static void broker_sends(const MqttPacket *p)
{
    Buf b = {0};
    ck_assert_int_eq(mqtt_encode(&b, p), 0);
    session_input(d.broker.session, b.data, b.len, now_ms());
    buf_free(&b);
}

/* The next packet the session wrote (after a tick), which must be of `type`. */
static MqttPacket next_packet(enum mqtt_type type)
{
    Session *s = d.broker.session;
    (void)session_tick(s, now_ms());
    ck_assert_int_eq(mqtt_decoder_feed(&wire, buf_view(&s->out).p, buf_size(&s->out)), 0);
    buf_clear(&s->out);
    MqttPacket p;
    ck_assert_int_eq(mqtt_decoder_next(&wire, &p), 1);
    ck_assert_msg(p.type == type, "got %s", mqtt_type_name(p.type));
    return p;
}

static void connect_session(bool clean)
{
    Session *s = d.broker.session;
    ck_assert(session_should_connect(s, now_ms()));
    session_transport_up(s, now_ms());
    next_packet(MQTT_CONNECT);
    MqttPacket ack = {.type = MQTT_CONNACK, .connack = {.session_present = !clean}};
    broker_sends(&ack);
    ck_assert_int_eq(s->state, SESSION_CONNECTED);
}

static void setup(void)
{
    memset(&d, 0, sizeof(d));
    n_said = 0;
    d.loop = ev_loop_new(EVFLAG_AUTO);
    ck_assert_ptr_nonnull(d.loop);
    dlist_init(&d.server.conns);
    ck_assert_int_eq(router_init(&d.router), 0);
    subs_init(&d);
    SessionConfig sc = {.client_id = VIEW_STR("t"),
                        .clean_session = true,
                        .connect_timeout_ms = 5000,
                        .reconnect_min_ms = 1000,
                        .reconnect_max_ms = 1000,
                        .max_inflight = 10,
                        .max_messages = 100,
                        .max_bytes = 100000,
                        .max_packet = 1 << 20};
    static const SessionCallbacks cb = {.event = on_event};
    ck_assert_int_eq(session_new(&sc, &cb, NULL, &d.broker.session), 0);
    mqtt_decoder_init(&wire, 0);
    connect_session(true);
}

static void teardown(void)
{
    session_free(d.broker.session);
    mqtt_decoder_free(&wire);
    router_free(&d.router);
    subs_free(&d);
    waiters_free(&d);
    ev_loop_destroy(d.loop);
}

static Client *client(uid_t uid)
{
    Client *c = calloc(1, sizeof(*c));
    ck_assert_ptr_nonnull(c);
    *c = (Client){.conn = {.uid = uid, .admitted = true}, .d = &d};
    dlist_init(&c->waiters);
    subs_client_init(c);
    dlist_push(&d.server.conns, &c->conn.link);
    return c;
}

static void client_done(Client *c)
{
    conn_close(&c->conn, "test");
    ck_assert_uint_eq(c->n_waiters, 0);
    free(c);
}

static const char *last_said(void)
{
    return n_said ? said[n_said - 1].text : "";
}

/* ---- tests ---- */

/* The first holder waits for the SUBACK; a second holder of the same filter is answered at
 * once; the barrier goes out only after the SUBACK; per-uid counts follow. */
START_TEST(subscribe_first_and_second_holder)
{
    Client *a = client(1000), *b = client(1000);
    json_t *id = json_integer(7);
    subs_subscribe(a, id, VIEW_STR("t/#"), 1, false, 5000, NULL);
    MqttPacket sub = next_packet(MQTT_SUBSCRIBE);
    ck_assert_uint_eq(n_said, 0);
    ck_assert_uint_eq(a->n_waiters, 2); /* the reply and the barrier */
    MqttPacket ack = {.type = MQTT_SUBACK,
                      .suback = {.id = sub.subscribe.id, .codes = VIEW("\x01", 1)}};
    broker_sends(&ack);
    ck_assert_str_eq(last_said(), "ok 7 {\"granted_qos\":1}");
    next_packet(MQTT_PINGREQ); /* the barrier, after the SUBACK */
    subs_subscribe(b, id, VIEW_STR("t/#"), 0, false, 5000, NULL);
    ck_assert_str_eq(last_said(), "ok 7 {\"granted_qos\":0}");
    ck_assert_uint_eq(subs_of_uid(&d, 1000), 2);
    ck_assert_uint_eq(subs_count(a), 1);
    /* Unsubscribing the first holder is answered at once; the broker keeps it for b. */
    subs_unsubscribe(a, id, VIEW_STR("t/#"), 5000);
    ck_assert_str_eq(last_said(), "ok 7 ");
    ck_assert_uint_eq(subs_of_uid(&d, 1000), 1);
    json_decref(id);
    client_done(a);
    client_done(b);
    ck_assert_uint_eq(subs_of_uid(&d, 1000), 0);
}
END_TEST

/* The last holder's unsubscribe waits for the UNSUBACK. */
START_TEST(last_holder_waits_for_unsuback)
{
    Client *a = client(1);
    subs_subscribe(a, NULL, VIEW_STR("x"), 0, false, 5000, NULL);
    MqttPacket sub = next_packet(MQTT_SUBSCRIBE);
    MqttPacket ack = {.type = MQTT_SUBACK,
                      .suback = {.id = sub.subscribe.id, .codes = VIEW("\x00", 1)}};
    broker_sends(&ack);
    next_packet(MQTT_PINGREQ);
    n_said = 0;
    json_t *id = json_integer(3);
    subs_unsubscribe(a, id, VIEW_STR("x"), 5000);
    ck_assert_uint_eq(n_said, 0);
    MqttPacket unsub = next_packet(MQTT_UNSUBSCRIBE);
    MqttPacket uack = {.type = MQTT_UNSUBACK, .suback = {.id = unsub.subscribe.id}};
    broker_sends(&uack);
    ck_assert_str_eq(last_said(), "ok 3 ");
    subs_unsubscribe(a, id, VIEW_STR("x"), 5000);
    ck_assert_str_eq(last_said(), "error 3 not_subscribed");
    json_decref(id);
    client_done(a);
}
END_TEST

/* A refused SUBACK: the client is told and does not hold the filter; its uid count is back. */
START_TEST(refused_subscribe_is_not_held)
{
    Client *a = client(5);
    subs_subscribe(a, NULL, VIEW_STR("no/#"), 1, false, 5000, NULL);
    MqttPacket sub = next_packet(MQTT_SUBSCRIBE);
    MqttPacket ack = {.type = MQTT_SUBACK,
                      .suback = {.id = sub.subscribe.id, .codes = VIEW("\x80", 1)}};
    broker_sends(&ack);
    ck_assert_str_eq(last_said(), "error -1 refused 0");
    ck_assert_uint_eq(subs_count(a), 0);
    ck_assert_uint_eq(subs_of_uid(&d, 5), 0);
    ck_assert_ptr_null(router_filter(&d.router, VIEW_STR("no/#")));
    client_done(a);
}
END_TEST

/* A client that leaves while its subscribe waits: nobody is answered, the session forgets
 * the request, and the SUBACK that comes later completes nothing. */
START_TEST(client_gone_while_waiting)
{
    Client *a = client(5);
    subs_subscribe(a, NULL, VIEW_STR("g"), 1, false, 5000, NULL);
    MqttPacket sub = next_packet(MQTT_SUBSCRIBE);
    client_done(a);
    MqttPacket ack = {.type = MQTT_SUBACK,
                      .suback = {.id = sub.subscribe.id, .codes = VIEW("\x01", 1)}};
    broker_sends(&ack);
    ck_assert_uint_eq(n_said, 0);
}
END_TEST

/* Several waiting: the session forgets them all in one pass, and the SUBACKs that come later
 * reach nobody (ASan would see a waiter used after it was freed). */
START_TEST(client_gone_while_many_wait)
{
    Client *a = client(5);
    const char *filters[] = {"g1", "g2", "g3"};
    MqttPacket subs[3];
    for (int i = 0; i < 3; i++) {
        subs_subscribe(a, NULL, VIEW_STR(filters[i]), 1, false, 5000, NULL);
        subs[i] = next_packet(MQTT_SUBSCRIBE);
    }
    client_done(a);
    for (int i = 0; i < 3; i++) {
        MqttPacket ack = {.type = MQTT_SUBACK,
                          .suback = {.id = subs[i].subscribe.id, .codes = VIEW("\x01", 1)}};
        broker_sends(&ack);
    }
    ck_assert_uint_eq(n_said, 0);
}
END_TEST

/* A restore the broker refuses after a reconnect: every holder is told and forgotten, and a
 * new subscribe asks the broker again. */
START_TEST(lost_restore_tells_every_holder)
{
    Client *a = client(1), *b = client(2);
    subs_subscribe(a, NULL, VIEW_STR("s/#"), 1, false, 5000, NULL);
    MqttPacket sub = next_packet(MQTT_SUBSCRIBE);
    MqttPacket ack = {.type = MQTT_SUBACK,
                      .suback = {.id = sub.subscribe.id, .codes = VIEW("\x01", 1)}};
    broker_sends(&ack);
    next_packet(MQTT_PINGREQ);
    subs_subscribe(b, NULL, VIEW_STR("s/#"), 1, false, 5000, NULL);
    n_said = 0;
    Session *s = d.broker.session;
    session_transport_down(s, now_ms(), ECONNRESET, "gone");
    s->retry_at = now_ms();
    connect_session(true);
    sub = next_packet(MQTT_SUBSCRIBE); /* the restore */
    ack.suback = (MqttSuback){.id = sub.subscribe.id, .codes = VIEW("\x80", 1)};
    broker_sends(&ack);
    size_t told = 0;
    for (size_t i = 0; i < n_said; i++) {
        told += strcmp(said[i].text, "unsubscribed s/#") == 0;
    }
    ck_assert_uint_eq(told, 2);
    ck_assert_uint_eq(subs_count(a) + subs_count(b), 0);
    ck_assert_uint_eq(subs_of_uid(&d, 1) + subs_of_uid(&d, 2), 0);
    subs_subscribe(a, NULL, VIEW_STR("s/#"), 1, false, 5000, NULL);
    next_packet(MQTT_SUBSCRIBE);
    client_done(a);
    client_done(b);
}
END_TEST

/* The per-uid limit counts every client of the uid, without walking them. */
START_TEST(per_uid_limit)
{
    d.cfg.acl.max_subscriptions_per_uid = 2;
    Client *a = client(9), *b = client(9), *other = client(10);
    subs_subscribe(a, NULL, VIEW_STR("a"), 0, false, 5000, NULL);
    subs_subscribe(b, NULL, VIEW_STR("b"), 0, false, 5000, NULL);
    n_said = 0;
    subs_subscribe(b, NULL, VIEW_STR("c"), 0, false, 5000, NULL);
    ck_assert_str_eq(last_said(), "error -1 forbidden");
    subs_subscribe(b, NULL, VIEW_STR("b"), 1, false, 5000, NULL); /* held already: not counted */
    ck_assert_uint_eq(n_said, 1);
    subs_subscribe(other, NULL, VIEW_STR("c"), 0, false, 5000, NULL);
    ck_assert_uint_eq(n_said, 1);
    ck_assert_uint_eq(subs_of_uid(&d, 9), 2);
    client_done(a);
    ck_assert_uint_eq(subs_of_uid(&d, 9), 1);
    client_done(b);
    client_done(other);
}
END_TEST

static bool keep_nothing_under_secret(Client *c, View filter, char *why, size_t n)
{
    (void)c;
    snprintf(why, n, "test");
    return !(filter.n >= 6 && memcmp(filter.p, "secret", 6) == 0);
}

/* A reload's re-check drops exactly what is no longer allowed, with an event each. */
START_TEST(recheck_drops_what_is_refused)
{
    Client *a = client(1);
    const char *filters[] = {"secret/a", "open/a", "secret/b", "open/b"};
    for (int i = 0; i < 4; i++) {
        subs_subscribe(a, NULL, VIEW_STR(filters[i]), 0, false, 5000, NULL);
    }
    n_said = 0;
    ck_assert(subs_recheck(a, keep_nothing_under_secret));
    ck_assert_uint_eq(n_said, 2);
    ck_assert_uint_eq(subs_count(a), 2);
    ck_assert_uint_eq(subs_of_uid(&d, 1), 2);
    client_done(a);
}
END_TEST

/* A waiter's timer answers it once; the broker's late answer then completes nothing. */
START_TEST(waiter_times_out_once)
{
    Client *a = client(1);
    json_t *id = json_integer(4);
    subs_subscribe(a, id, VIEW_STR("slow"), 1, false, 1, NULL);
    MqttPacket sub = next_packet(MQTT_SUBSCRIBE);
    for (int i = 0; i < 200 && n_said == 0; i++) {
        ev_run(d.loop, EVRUN_ONCE);
    }
    ck_assert_str_eq(last_said(), "error 4 timeout");
    for (int i = 0; i < 200 && a->n_waiters; i++) { /* the barrier's timer, which says nothing */
        ev_run(d.loop, EVRUN_ONCE);
    }
    ck_assert_uint_eq(a->n_waiters, 0);
    ck_assert_uint_eq(n_said, 1);
    MqttPacket ack = {.type = MQTT_SUBACK,
                      .suback = {.id = sub.subscribe.id, .codes = VIEW("\x01", 1)}};
    broker_sends(&ack);
    ck_assert_uint_eq(n_said, 1);
    json_decref(id);
    client_done(a);
}
END_TEST

static Suite *daemon_suite(void)
{
    Suite *s = suite_create("daemon");
    TCase *tc = tcase_create("subs");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, subscribe_first_and_second_holder);
    tcase_add_test(tc, last_holder_waits_for_unsuback);
    tcase_add_test(tc, refused_subscribe_is_not_held);
    tcase_add_test(tc, client_gone_while_waiting);
    tcase_add_test(tc, client_gone_while_many_wait);
    tcase_add_test(tc, lost_restore_tells_every_holder);
    tcase_add_test(tc, per_uid_limit);
    tcase_add_test(tc, recheck_drops_what_is_refused);
    suite_add_tcase(s, tc);
    tc = tcase_create("waiters");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, waiter_times_out_once);
    suite_add_tcase(s, tc);
    return s;
}

CHECK_MAIN(daemon_suite)

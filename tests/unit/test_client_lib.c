/* SPDX-License-Identifier: MIT */
/*
 * libmqttbridge (clients/lib) against a scripted daemon in the same thread: a listening Unix
 * socket whose side of the connection the test reads and writes by hand. Request encoding,
 * replies matched to requests in whatever order they come, events to their callbacks or kept,
 * payloads decoded, timeouts with late replies, the connection ending under waiting requests.
 * (The real daemon is exercised through mqttctl and the installed example: test_c_client.py.)
 */
#include <errno.h>
#include <mqttbridge/client.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "testutil.h"

static char dir[] = "/tmp/test-client-lib-XXXXXX";
static char path[200];
static int listener, peer;
static mqb_client *c;

static void setup(void)
{
    ck_assert_ptr_nonnull(mkdtemp(strcpy(dir, "/tmp/test-client-lib-XXXXXX")));
    snprintf(path, sizeof(path), "%s/sock", dir);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    strcpy(a.sun_path, path);
    listener = socket(AF_UNIX, SOCK_STREAM, 0);
    ck_assert_int_eq(bind(listener, (struct sockaddr *)&a, sizeof(a)), 0);
    ck_assert_int_eq(listen(listener, 4), 0);
    ck_assert_int_eq(mqb_connect(path, &c), 0);
    peer = accept(listener, NULL, NULL);
    ck_assert_int_ge(peer, 0);
}

static void teardown(void)
{
    mqb_close(c);
    if (peer >= 0) {
        close(peer);
    }
    close(listener);
    unlink(path);
    rmdir(dir);
}

/* The daemon's side: one request line, parsed. */
static json_t *daemon_reads(void)
{
    static char buf[65536];
    static size_t have;
    for (;;) {
        char *nl = memchr(buf, '\n', have);
        if (nl) {
            json_t *j = json_loadb(buf, (size_t)(nl - buf), 0, NULL);
            ck_assert_ptr_nonnull(j);
            have -= (size_t)(nl + 1 - buf);
            memmove(buf, nl + 1, have);
            return j;
        }
        ck_assert_int_eq(mqb_flush(c, 1000), 0);
        ssize_t n = read(peer, buf + have, sizeof(buf) - have);
        ck_assert_int_gt(n, 0);
        have += (size_t)n;
    }
}

static void daemon_writes(const char *line)
{
    size_t n = strlen(line);
    ck_assert_int_eq(write(peer, line, n), (ssize_t)n);
}

/* Run the client until nothing more is there. */
static void pump(void)
{
    while (mqb_wait(c, 50) > 0) {
    }
}

typedef struct Seen {
    int replies, messages, events, closed;
    int64_t reply_ids[8];
    char payload[64];
    size_t payload_len;
    uint64_t seq;
} Seen;

static void on_reply(mqb_client *cl, const json_t *reply, void *ud)
{
    (void)cl;
    Seen *s = ud;
    if (!reply) {
        s->closed++;
        return;
    }
    s->reply_ids[s->replies++] = json_integer_value(json_object_get(reply, "id"));
}

static void on_message(mqb_client *cl, const mqb_message *m, void *ud)
{
    (void)cl;
    Seen *s = ud;
    s->messages++;
    ck_assert_uint_lt(m->payload_len, sizeof(s->payload));
    memcpy(s->payload, m->payload, m->payload_len);
    s->payload_len = m->payload_len;
    s->seq = m->seq;
    ck_assert_str_eq(m->topic, "t/1");
}

static void on_event(mqb_client *cl, const json_t *ev, void *ud)
{
    (void)cl;
    (void)ev;
    ((Seen *)ud)->events++;
}

START_TEST(requests_are_encoded_as_the_protocol_says)
{
    json_t *props = json_pack("{s:s, s:i}", "content_type", "text/plain", "message_expiry", 30);
    int64_t a = mqb_publish(c,
                            &(mqb_publish_args){.topic = "t/\"q\"",
                                                .payload = "h\xc3\xa9",
                                                .payload_len = 3,
                                                .qos = 1,
                                                .retain = true,
                                                .timeout_ms = 500,
                                                .properties = props},
                            NULL, NULL);
    int64_t b =
        mqb_publish(c,
                    &(mqb_publish_args){
                        .topic = "bin", .payload = "\x00\xff", .payload_len = 2, .no_wait = true},
                    NULL, NULL);
    ck_assert_int_eq(b, a + 1);
    json_t *r = daemon_reads();
    ck_assert_int_eq(json_integer_value(json_object_get(r, "id")), a);
    ck_assert_str_eq(json_string_value(json_object_get(r, "op")), "publish");
    ck_assert_str_eq(json_string_value(json_object_get(r, "topic")), "t/\"q\"");
    ck_assert_str_eq(json_string_value(json_object_get(r, "payload")), "h\xc3\xa9");
    ck_assert_int_eq(json_integer_value(json_object_get(r, "qos")), 1);
    ck_assert(json_is_true(json_object_get(r, "retain")));
    ck_assert(json_is_true(json_object_get(r, "wait")));
    ck_assert_int_eq(json_integer_value(json_object_get(r, "timeout_ms")), 500);
    ck_assert_str_eq(json_string_value(json_object_get(r, "content_type")), "text/plain");
    ck_assert_int_eq(json_integer_value(json_object_get(r, "message_expiry")), 30);
    json_decref(r);
    r = daemon_reads();
    ck_assert_str_eq(json_string_value(json_object_get(r, "payload_b64")), "AP8=");
    ck_assert(json_is_false(json_object_get(r, "wait")));
    ck_assert_ptr_null(json_object_get(r, "timeout_ms"));
    json_decref(r);
    ck_assert_int_eq(mqb_ack(c, 7), 0);
    r = daemon_reads();
    ck_assert_str_eq(json_string_value(json_object_get(r, "op")), "ack");
    ck_assert_int_eq(json_integer_value(json_object_get(r, "seq")), 7);
    ck_assert_ptr_null(json_object_get(r, "id"));
    json_decref(r);
    /* What the protocol cannot carry is refused before anything is queued. */
    ck_assert_int_eq(mqb_publish(c, &(mqb_publish_args){.topic = "t", .qos = 3}, NULL, NULL),
                     -EINVAL);
    ck_assert_int_eq(mqb_publish(c, &(mqb_publish_args){.payload_len = 1}, NULL, NULL), -EINVAL);
    ck_assert_int_eq(mqb_subscribe(c, "t", -1, NULL, NULL), -EINVAL);
    ck_assert_int_eq(mqb_ack(c, 0), -EINVAL);
    ck_assert_int_eq(mqb_send(c, json_string("not an object"), NULL, NULL), -EINVAL);
    ck_assert_uint_eq(mqb_unsent(c), 0);
    json_decref(props);
}
END_TEST

START_TEST(replies_and_events_go_where_they_belong)
{
    Seen s = {0};
    mqb_on_message(c, on_message, &s);
    mqb_on_event(c, on_event, &s);
    int64_t a = mqb_subscribe(c, "t/#", 1, on_reply, &s);
    int64_t b = mqb_publish(
        c, &(mqb_publish_args){.topic = "t/1", .payload = "x", .payload_len = 1, .qos = 1},
        on_reply, &s);
    int64_t k = mqb_send(c, json_pack("{s:s}", "op", "status"), NULL, NULL); /* no callback: kept */
    json_decref(daemon_reads());
    json_decref(daemon_reads());
    json_decref(daemon_reads());
    char line[256];
    /* Out of order, with events between, and a line split across two writes. */
    snprintf(
        line, sizeof(line),
        "{\"id\":%lld,\"ok\":true}\n{\"event\":\"message\",\"topic\":\"t/"
        "1\",\"payload_b64\":\"AAEC\",\"qos\":1,\"retain\":false,\"seq\":9}\n{\"event\":\"conn",
        (long long)b);
    daemon_writes(line);
    pump();
    daemon_writes("ected\",\"session_present\":false}\n");
    snprintf(
        line, sizeof(line),
        "{\"id\":%lld,\"ok\":true,\"granted_qos\":1}\n{\"id\":%lld,\"ok\":true,\"status\":{}}\n",
        (long long)a, (long long)k);
    daemon_writes(line);
    pump();
    ck_assert_int_eq(s.replies, 2);
    ck_assert_int_eq(s.reply_ids[0], b);
    ck_assert_int_eq(s.reply_ids[1], a);
    ck_assert_int_eq(s.messages, 1);
    ck_assert_uint_eq(s.payload_len, 3);
    ck_assert_mem_eq(s.payload, "\0\1\2", 3);
    ck_assert_uint_eq(s.seq, 9);
    ck_assert_int_eq(s.events, 1);
    json_t *m;
    ck_assert_int_eq(mqb_next(c, &m, 0), 1);
    ck_assert_int_eq(json_integer_value(json_object_get(m, "id")), k);
    json_decref(m);
    ck_assert_int_eq(mqb_next(c, &m, 10), 0);
}
END_TEST

START_TEST(blocking_helpers_time_out_and_keep_late_replies)
{
    json_t *reply;
    ck_assert_int_eq(mqb_call(c, json_pack("{s:s}", "op", "ping"), &reply, 100), -ETIMEDOUT);
    json_t *req = daemon_reads();
    json_int_t id = json_integer_value(json_object_get(req, "id"));
    json_decref(req);
    char line[128];
    snprintf(line, sizeof(line), "{\"id\":%lld,\"ok\":true}\n{\"event\":\"ping\",\"rtt_ms\":3}\n",
             (long long)id);
    daemon_writes(line);
    json_t *m;
    ck_assert_int_eq(mqb_next(c, &m, 1000), 1); /* the late reply, then the event */
    ck_assert_int_eq(json_integer_value(json_object_get(m, "id")), id);
    json_decref(m);
    ck_assert_int_eq(mqb_next(c, &m, 1000), 1);
    ck_assert_str_eq(json_string_value(json_object_get(m, "event")), "ping");
    json_decref(m);
    /* An error answer: -EPROTO and the daemon's words. */
    snprintf(line, sizeof(line),
             "{\"id\":%lld,\"ok\":false,\"error\":{\"code\":\"refused\",\"message\":\"no\"}}\n",
             (long long)id + 1);
    daemon_writes(line);
    ck_assert_int_eq(mqb_publish_wait(c, &(mqb_publish_args){.topic = "t", .qos = 1}, 1000),
                     -EPROTO);
    ck_assert_str_eq(mqb_last_error(c), "refused: no");
    json_decref(daemon_reads());
    /* The raw reader sees lines as they are. */
    daemon_writes("{\"id\":99,\"ok\":true}\n");
    const char *p;
    size_t n;
    ck_assert_int_eq(mqb_next_line(c, &p, &n, 1000), 1);
    ck_assert_uint_eq(n, strlen("{\"id\":99,\"ok\":true}"));
    ck_assert_mem_eq(p, "{\"id\":99,\"ok\":true}", n);
}
END_TEST

START_TEST(the_daemon_going_away_ends_every_waiting_request)
{
    Seen s = {0};
    mqb_subscribe(c, "a", 0, on_reply, &s);
    mqb_subscribe(c, "b", 0, on_reply, &s);
    json_decref(daemon_reads());
    json_decref(daemon_reads());
    daemon_writes("{\"id\":1,\"ok\":true,\"granted_qos\":0}\n");
    close(peer);
    peer = -1;
    int r;
    while ((r = mqb_wait(c, 1000)) > 0) {
    }
    ck_assert_int_eq(r, -EPIPE);
    ck_assert_int_eq(s.replies, 1); /* what it sent before it went is delivered */
    ck_assert_int_eq(s.closed, 1);
    ck_assert_int_eq(mqb_process(c), -EPIPE);
    json_t *reply;
    ck_assert_int_eq(mqb_call(c, json_pack("{s:s}", "op", "status"), &reply, 1000), -EPIPE);
    ck_assert_int_eq(mqb_publish_wait(c, &(mqb_publish_args){.topic = "t"}, 1000), -EPIPE);
}
END_TEST

static void close_in_callback(mqb_client *cl, const mqb_message *m, void *ud)
{
    (void)m;
    (*(int *)ud)++;
    mqb_close(cl); /* deferred: the client is freed once this returns */
}

static void wait_in_callback(mqb_client *cl, const mqb_message *m, void *ud)
{
    Seen *s = ud;
    char copy[64];
    ck_assert_uint_lt(m->payload_len, sizeof(copy));
    memcpy(copy, m->payload, m->payload_len);
    if (s->messages++ == 0) {
        ck_assert_int_eq(mqb_wait(cl, 1000), 1); /* the second message, nested */
    }
    ck_assert_mem_eq(m->payload, copy, m->payload_len); /* still its own */
    s->payload_len += m->payload_len;
}

START_TEST(callbacks_may_close_or_wait)
{
    Seen s = {0};
    mqb_on_message(c, wait_in_callback, &s);
    daemon_writes("{\"event\":\"message\",\"topic\":\"t/1\",\"payload_b64\":\"YWFh\"}\n"
                  "{\"event\":\"message\",\"topic\":\"t/1\",\"payload_b64\":\"YmJiYg==\"}\n");
    pump(); /* the first one's callback waits, and gets the second */
    ck_assert_int_eq(s.messages, 2);
    ck_assert_uint_eq(s.payload_len, 7);
    int closed = 0;
    mqb_on_message(c, close_in_callback, &closed);
    daemon_writes("{\"event\":\"message\",\"topic\":\"t/1\",\"payload\":\"x\"}\n"
                  "{\"event\":\"message\",\"topic\":\"t/1\",\"payload\":\"y\"}\n");
    int r;
    while ((r = mqb_wait(c, 1000)) == 0) {
    }
    ck_assert_int_eq(r, -ECANCELED); /* freed: the second message never reached it */
    ck_assert_int_eq(closed, 1);
    c = NULL; /* teardown's mqb_close(NULL) does nothing */
}
END_TEST

START_TEST(what_cannot_be_sent_is_refused)
{
    ck_assert_int_eq(mqb_publish(c, &(mqb_publish_args){.topic = "bad\xff"}, NULL, NULL), -EINVAL);
    ck_assert_int_eq(mqb_subscribe(c, "bad\xc3", 0, NULL, NULL), -EINVAL);
    ck_assert_int_eq(mqb_unsubscribe(c, NULL, NULL, NULL), -EINVAL);
    ck_assert_int_eq(mqb_publish(c, NULL, NULL, NULL), -EINVAL);
    ck_assert_int_eq(mqb_publish(NULL, &(mqb_publish_args){.topic = "t"}, NULL, NULL), -EINVAL);
    ck_assert_int_eq(mqb_send(NULL, json_object(), NULL, NULL), -EINVAL);
    ck_assert_int_eq(mqb_call(c, json_object(), NULL, 10), -EINVAL);
    ck_assert_int_eq(mqb_next(c, NULL, 10), -EINVAL);
    ck_assert_int_eq(mqb_process(NULL), -EINVAL);
    ck_assert_uint_eq(mqb_unsent(c), 0);
}
END_TEST

START_TEST(garbage_and_a_last_word_before_closing)
{
    daemon_writes("not json\n{\"event\":\"ping\",\"rtt_ms\":1}\n");
    ck_assert_int_eq(mqb_wait(c, 1000), -EBADMSG);
    json_t *m;
    ck_assert_int_eq(mqb_next(c, &m, 1000), 1); /* the line after it is read */
    ck_assert_str_eq(json_string_value(json_object_get(m, "event")), "ping");
    json_decref(m);
    /* A daemon that refuses and closes: the refusal is read before the end is reported. */
    daemon_writes("{\"id\":null,\"ok\":false,\"error\":{\"code\":\"refused\",\"message\":\"too "
                  "many clients\"}}\n");
    close(peer);
    peer = -1;
    mqb_publish(c, &(mqb_publish_args){.topic = "t"}, NULL, NULL);
    const char *p;
    size_t n;
    ck_assert_int_eq(mqb_next_line(c, &p, &n, 1000), 1);
    ck_assert(n > 10 && memmem(p, n, "too many clients", 16));
    ck_assert_int_lt(mqb_next_line(c, &p, &n, 1000), 0);
    ck_assert_int_lt(mqb_publish(c, &(mqb_publish_args){.topic = "t"}, NULL, NULL), 0);
}
END_TEST

static void count_closed(mqb_client *cl, const json_t *reply, void *ud)
{
    ck_assert_ptr_null(reply);
    ck_assert_int_eq(mqb_subscribe(cl, "again", 0, count_closed, ud), -EPIPE); /* no loop */
    (*(int *)ud)++;
}

START_TEST(closing_fails_every_waiter_once)
{
    int failed = 0;
    for (int i = 0; i < 20000; i++) {
        ck_assert_int_gt(mqb_subscribe(c, "x", 0, count_closed, &failed), 0);
    }
    mqb_close(c);
    c = NULL;
    ck_assert_int_eq(failed, 20000);
}
END_TEST

START_TEST(connect_errors_are_plain)
{
    mqb_client *x = NULL;
    ck_assert_int_eq(mqb_connect("/nonexistent/socket", &x), -ENOENT);
    ck_assert_ptr_null(x);
    char longpath[200];
    memset(longpath, 'a', sizeof(longpath) - 1);
    longpath[sizeof(longpath) - 1] = 0;
    ck_assert_int_eq(mqb_connect(longpath, &x), -ENAMETOOLONG);
    setenv("MQTTBRIDGE_SOCKET", "/x/y", 1);
    ck_assert_str_eq(mqb_default_socket(), "/x/y");
    unsetenv("MQTTBRIDGE_SOCKET");
    ck_assert_str_eq(mqb_default_socket(), "/run/mqttbridge/mqttbridge.sock");
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("client_lib");
    TCase *tc = tcase_create("client_lib");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, requests_are_encoded_as_the_protocol_says);
    tcase_add_test(tc, replies_and_events_go_where_they_belong);
    tcase_add_test(tc, blocking_helpers_time_out_and_keep_late_replies);
    tcase_add_test(tc, the_daemon_going_away_ends_every_waiting_request);
    tcase_add_test(tc, connect_errors_are_plain);
    tcase_add_test(tc, callbacks_may_close_or_wait);
    tcase_add_test(tc, what_cannot_be_sent_is_refused);
    tcase_add_test(tc, garbage_and_a_last_word_before_closing);
    tcase_add_test(tc, closing_fails_every_waiter_once);
    suite_add_tcase(s, tc);
    return s;
}

CHECK_MAIN(suite)

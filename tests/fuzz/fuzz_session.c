/* SPDX-License-Identifier: MIT */
/* Fuzz the session with whatever a broker might send after CONNACK, with requests mixed
 * in: no crash, no leak, and the link is either up or cleanly down. */
#include <stdlib.h>

#include "mqtt/session.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void on_event(void *ud, const SessionEvent *ev)
{
    (void)ud;
    (void)ev;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    SessionConfig cfg = {.client_id = VIEW_STR("fuzz"),
                         .keepalive = 5,
                         .clean_session = true,
                         .connect_timeout_ms = 1000,
                         .reconnect_min_ms = 10,
                         .reconnect_max_ms = 100,
                         .max_inflight = 4,
                         .max_messages = 16,
                         .max_bytes = 4096,
                         .max_packet = 1 << 16,
                         .seed = 1};
    static const SessionCallbacks cb = {.event = on_event};
    Session *s;
    if (session_new(&cfg, &cb, NULL, &s) < 0) {
        return 0;
    }
    int64_t now = 1000;
    session_should_connect(s, now);
    session_transport_up(s, now);
    session_input(s, "\x20\x02\x00\x00", 4, now);
    session_subscribe(s, &(SessionSubscribe){VIEW_STR("a/#"), 1, 0}, NULL, now);
    SessionPublish p = {.topic = VIEW_STR("t"), .payload = VIEW_STR("x"), .qos = 2};
    session_publish(s, &p, NULL, now, NULL);
    for (size_t i = 0; i < size;) {
        size_t n = (size_t)data[i] % 32 + 1;
        i++;
        n = n < size - i ? n : size - i;
        session_input(s, data + i, n, now);
        i += n;
        now += 100;
        session_tick(s, now);
        buf_clear(&s->out);
        if (s->state == SESSION_IDLE && session_should_connect(s, now + 1000)) {
            session_transport_up(s, now);
            session_input(s, "\x20\x02\x00\x00", 4, now);
        }
    }
    session_free(s);
    return 0;
}

/* SPDX-License-Identifier: MIT */
/* Fuzz the session with whatever a broker might send after CONNACK, with requests mixed
 * in: no crash, no leak, and the link is either up or cleanly down. An input whose first
 * byte is 0x05 plays an MQTT 5 broker (its CONNACK allows topic aliases and at most two
 * messages in flight), any other a 3.1.1 one. */
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
    /* MQTT 5 CONNACK: Receive Maximum 2, Topic Alias Maximum 3. */
    static const char connack5[] = "\x20\x09\x00\x00\x06\x21\x00\x02\x22\x00\x03";
    const char *connack = "\x20\x02\x00\x00";
    size_t connack_n = 4;
    if (size && data[0] == 5) {
        cfg.protocol = SESSION_PROTOCOL_5;
        cfg.topic_aliases = true;
        cfg.topic_alias_maximum = 4;
        connack = connack5;
        connack_n = sizeof(connack5) - 1;
        data++;
        size--;
    }
    static const SessionCallbacks cb = {.event = on_event};
    Session *s;
    if (session_new(&cfg, &cb, NULL, &s) < 0) {
        return 0;
    }
    int64_t now = 1000;
    session_should_connect(s, now);
    session_transport_up(s, now);
    session_input(s, connack, connack_n, now);
    session_subscribe(s, &(SessionSubscribe){.filter = VIEW_STR("a/#"), .qos = 1, .subid = 0}, NULL,
                      now);
    SessionPublish p = {.topic = VIEW_STR("t/a"), .payload = VIEW_STR("x"), .qos = 2};
    for (int k = 0; k < 3; k++) {
        session_publish(s, &p, NULL, now, NULL); /* the same topic: by alias after the first */
    }
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
            session_input(s, connack, connack_n, now);
        }
    }
    session_free(s);
    return 0;
}

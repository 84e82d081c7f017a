/* SPDX-License-Identifier: MIT */
/*
 * libmqttbridge in an event loop (here poll(2); any loop watching one fd will do): subscribe to
 * FILTER, publish one message to TOPIC (so there is something to see), print COUNT messages
 * as "topic payload", then exit. Build against the installed library:
 *
 *     cc subscriber.c $(pkg-config --cflags --libs mqttbridge) -o subscriber
 *     ./subscriber 'demo/#' demo/hello 'hi there' 1
 *
 * The socket is $MQTTBRIDGE_SOCKET, else /run/mqttbridge/mqttbridge.sock.
 */
#include <mqttbridge/client.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct State {
    int wanted, got;
    int replies_owed; /* a reply can come after the message it made: wait for both */
    int failed;
} State;

static void on_reply(mqb_client *c, const json_t *reply, void *userdata)
{
    (void)c;
    State *s = userdata;
    s->replies_owed--;
    const char *message = NULL, *code = mqb_reply_error(reply, &message);
    if (!mqb_reply_ok(reply)) {
        fprintf(stderr, "subscriber: %s: %s\n", code ? code : "closed", message ? message : "");
        s->failed = 1;
    }
}

static void on_message(mqb_client *c, const mqb_message *m, void *userdata)
{
    (void)c;
    State *s = userdata;
    printf("%s %.*s\n", m->topic, (int)m->payload_len, (const char *)m->payload);
    fflush(stdout);
    s->got++;
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: subscriber FILTER TOPIC MESSAGE COUNT\n");
        return 2;
    }
    State s = {.wanted = atoi(argv[4])};
    mqb_client *c;
    int r = mqb_connect(NULL, &c);
    if (r < 0) {
        fprintf(stderr, "subscriber: cannot connect to %s: %s\n", mqb_default_socket(),
                strerror(-r));
        return 1;
    }
    mqb_on_message(c, on_message, &s);
    /* The daemon sends the broker the SUBSCRIBE before the PUBLISH, on its one connection, so
     * the message comes back. The publish is answered once the broker has it, which may be
     * after its message came back: wait for both replies and the message. */
    s.replies_owed = 2;
    int64_t sub = mqb_subscribe(c, argv[1], 1, on_reply, &s);
    int64_t pub = sub < 0 ? sub
                          : mqb_publish(c,
                                        &(mqb_publish_args){.topic = argv[2],
                                                            .payload = argv[3],
                                                            .payload_len = strlen(argv[3]),
                                                            .qos = 1},
                                        on_reply, &s);
    if (pub < 0) {
        fprintf(stderr, "subscriber: %s\n", strerror((int)-pub));
        mqb_close(c);
        return 1;
    }
    while ((s.got < s.wanted || s.replies_owed > 0) && !s.failed) {
        struct pollfd p = {.fd = mqb_fd(c), .events = mqb_poll_events(c)};
        if (poll(&p, 1, 10000) <= 0) {
            fprintf(stderr, "subscriber: nothing for 10 s\n");
            break;
        }
        if ((r = mqb_process(c)) < 0) {
            fprintf(stderr, "subscriber: %s\n", strerror(-r));
            break;
        }
    }
    mqb_close(c);
    return s.got == s.wanted && !s.failed ? 0 : 1;
}

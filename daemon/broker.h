/* SPDX-License-Identifier: MIT */
/*
 * The broker link: drives the sans-I/O Session (lib/mqtt/session.h) with real sockets.
 * It resolves the configured hosts without blocking, tries every address of every host in
 * turn, keeps the session's deadlines on one ev_timer, and moves bytes between the socket
 * and the session. Session events are handed on to the daemon through `on_event`.
 */
#pragma once

#include <ev.h>

#include "config.h"
#include "mqtt/mount.h"
#include "mqtt/session.h"
#include "resolve.h"
#include "transport.h"

typedef struct Broker Broker;
typedef void (*broker_event_cb)(void *userdata, const SessionEvent *ev);

struct Broker {
    struct ev_loop *loop;
    Session *session;
    const Config *cfg;
    const MqttMount *mount; /* the daemon's [topics] mount, borrowed */
    TlsContext *tls;        /* the daemon's, borrowed (each TLS connection holds a reference); NULL
                             * without TLS */
    broker_event_cb on_event;
    void *userdata;
    /* After what a read brought was handed on, when it made output for the link (a PUBACK, a
     * PUBREC), before that is written (NULL: nothing): the daemon writes its deliveries there,
     * so that a message reaches local clients before its acknowledgement leaves. */
    void (*on_input_done)(void *userdata);

    Transport tr;
    ev_io io;
    ev_timer timer;
    ev_prepare prepare; /* before the loop sleeps: what this iteration asked for goes out */
    /* Active while the link has work that no descriptor will announce: TLS records read past a
     * wake-up's budget waiting in memory, or a queue the session stopped encoding at its
     * high-water mark (Session.backlogged) once the socket took what it had. It keeps the loop
     * from sleeping; the prepare watcher reads on and ticks the session. */
    ev_idle more;
    Resolve *resolving;
    struct addrinfo *addrs, *addr; /* of the host being tried */
    size_t host;                   /* index into cfg->broker.addrs */
    size_t hosts_tried;            /* in this attempt */
    bool handshaking;              /* TLS handshake in progress */
    bool up;                       /* stream ready (CONNECT sent or about to be) */
    char peer[300];                /* "host:port" being tried or connected to */
    char last_net_error[256];
    /* The host being tried, copied when it is started: a reload may replace cfg meanwhile,
     * and TLS (SNI, name check) must name the host the socket is connected to. */
    char *attempt_host;
    unsigned attempt_port;
    bool rewind_hosts;   /* cfg replaced: the next attempt starts at the first host */
    BrokerAddr redirect; /* MQTT 5: where the broker sent us, tried first (host NULL: none) */
};

/* Start the link with the session configuration built from cfg (strings copied). */
int broker_init(Broker *b, struct ev_loop *loop, const Config *cfg, TlsContext *tls,
                const char *client_id, const char *password, const MqttMount *mount,
                broker_event_cb on_event, void *userdata);
void broker_free(Broker *b);
/* Configuration changed: takes effect at the next connect attempt; one in progress goes on
 * with the host and port it started with. */
int broker_configure(Broker *b, const Config *cfg, TlsContext *tls, const char *client_id,
                     const char *password);
/* Run the session's clock now and write what it produced (call after requests). */
void broker_kick(Broker *b);
/* Drop the link cleanly and connect again. */
void broker_reconnect(Broker *b);
/* Graceful stop: DISCONNECT written (best effort) and the socket closed. */
void broker_stop(Broker *b);

int64_t now_ms(void);  /* the session's clock (monotonic) */
int64_t wall_ms(void); /* Unix time, for what outlives the process (the spool's expiries) */

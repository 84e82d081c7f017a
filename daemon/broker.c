/* SPDX-License-Identifier: MIT */
/*
 * The broker link: see broker.h.
 *
 * Attempt flow: session_should_connect() -> resolve host -> connect each address in turn
 * -> (next host when all fail) -> session_transport_up(). Any failure before that ends the
 * attempt with session_transport_down(), and the session decides when to try again. The
 * next attempt starts at the host after the one that failed, so a dead first host does not
 * shadow a healthy second one.
 */
#include "broker.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "defaults.h"
#include "log.h"

#define READ_CHUNK 65536

static void on_io(struct ev_loop *loop, ev_io *w, int revents);
static void try_address(Broker *b);

int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

_Static_assert((int)PROTOCOL_311 == (int)SESSION_PROTOCOL_311 &&
                   (int)PROTOCOL_5 == (int)SESSION_PROTOCOL_5 &&
                   (int)PROTOCOL_AUTO == (int)SESSION_PROTOCOL_AUTO,
               "[broker] protocol maps onto the session's protocol");

static SessionConfig session_config(const Config *cfg, const char *client_id, const char *password,
                                    const MqttMount *mount)
{
    const struct BrokerConfig *c = &cfg->broker;
    bool will = cfg->will.topic && *cfg->will.topic;
    return (SessionConfig){
        .client_id = VIEW_STR(client_id),
        .username = VIEW_STR(c->username ? c->username : ""),
        .has_username = c->username && *c->username,
        .password = VIEW_STR(password ? password : ""),
        .has_password = password != NULL,
        .keepalive = (uint16_t)c->keepalive,
        .clean_session = c->clean_session,
        .will = will,
        .will_topic = VIEW_STR(will ? cfg->will.topic : ""),
        .will_payload = VIEW_STR(will && cfg->will.message ? cfg->will.message : ""),
        .will_qos = (uint8_t)cfg->will.qos,
        .will_retain = cfg->will.retain,
        .connect_timeout_ms = (int64_t)c->connect_timeout * 1000,
        .reconnect_min_ms = (int64_t)c->reconnect_min * 1000,
        .reconnect_max_ms = (int64_t)c->reconnect_max * 1000,
        .max_inflight = (uint16_t)c->max_inflight,
        .max_messages = cfg->queue.max_messages,
        .max_bytes = cfg->queue.max_bytes,
        .max_packet = c->maximum_packet_size ? c->maximum_packet_size : MQTT_PACKET_MAX,
        .seed = (uint64_t)now_ms() ^ (uint64_t)getpid() << 32,
        .protocol = (uint8_t)c->protocol, /* the same order as enum session_protocol */
        .session_expiry = config_session_expiry(cfg),
        .receive_maximum = (uint16_t)c->receive_maximum,
        .topic_alias_maximum = (uint16_t)c->topic_alias_maximum,
        .topic_aliases = c->topic_aliases,
        .request_response_info = c->request_response_information,
        .will_delay = cfg->will.delay,
        .will_message_expiry = cfg->will.message_expiry,
        .will_content_type = VIEW_STR(will && cfg->will.content_type ? cfg->will.content_type : ""),
        .max_publish_rate = c->max_publish_rate,
        .max_publish_bytes = c->max_publish_bytes,
        .mount = mount,
    };
}

/* Records are waiting in memory (or not): read them before the loop next sleeps. */
static void set_more(Broker *b, bool more)
{
    if (more) {
        ev_idle_start(b->loop, &b->more);
    } else {
        ev_idle_stop(b->loop, &b->more);
    }
}

static void close_link(Broker *b)
{
    set_more(b, false);
    ev_io_stop(b->loop, &b->io);
    transport_close(&b->tr);
    if (b->addrs) {
        freeaddrinfo(b->addrs);
        b->addrs = b->addr = NULL;
    }
    resolve_cancel(b->resolving);
    b->resolving = NULL;
    b->up = false;
    b->handshaking = false;
}

/* A TLS link dropped by the broker right after the handshake, before CONNACK, when we sent no
 * certificate: most likely a broker that requires one, whose alert the reset destroyed. */
static const char *refused_after_handshake(const Broker *b)
{
    bool no_cert = !b->cfg->tls.cert_file || !*b->cfg->tls.cert_file;
    return b->tr.tls && no_cert && b->session->state == SESSION_CONNACK_WAIT
               ? " right after the TLS handshake: the broker probably requires a client "
                 "certificate (see [tls] cert_file)"
               : "";
}

/* Write what the session produced; keep the write watcher on only while bytes wait. */
static void flush(Broker *b)
{
    Buf *out = &b->session->out;
    while (b->tr.fd >= 0 && buf_size(out)) {
        ssize_t n = transport_write(&b->tr, out->data + out->off, buf_size(out));
        if (n == -EAGAIN) {
            break;
        }
        if (n < 0 && n != -EPROTO && b->tr.tls) {
            /* With TLS 1.3 a server that refuses our certificate says so in an alert after
             * the handshake; our next write can meet the closed socket first. The alert is
             * then still waiting to be read, and it is the real reason. */
            uint8_t scratch[256];
            if (transport_read(&b->tr, scratch, sizeof(scratch)) == -EPROTO) {
                n = -EPROTO;
            }
        }
        if (n < 0) {
            char reason[700];
            if (n == -EPROTO) {
                snprintf(reason, sizeof(reason), "TLS error from %s: %s", b->peer,
                         tls_last_error(b->tr.tls));
            } else {
                snprintf(reason, sizeof(reason), "write to %s: %s%s", b->peer, strerror((int)-n),
                         refused_after_handshake(b));
            }
            session_transport_down(b->session, now_ms(), (int)-n, reason);
            return;
        }
        buf_consume(out, (size_t)n);
    }
    if (b->tr.fd < 0 || !b->up) {
        return;
    }
    /* TLS may need the fd writable to go on reading (renegotiation, key update); plain TCP's
     * want is only what the last call met. */
    bool tls_wants_write = b->tr.tls && b->tr.want == EV_WRITE;
    int events = EV_READ | (buf_size(out) || tls_wants_write ? EV_WRITE : 0);
    if (!ev_is_active(&b->io) || b->io.events != events) {
        ev_io_stop(b->loop, &b->io);
        ev_io_set(&b->io, b->tr.fd, events);
        ev_io_start(b->loop, &b->io);
    }
    if (!buf_size(out)) {
        buf_shrink(out, 65536);
    }
}

static void on_session_event(void *userdata, const SessionEvent *ev)
{
    Broker *b = userdata;
    if (ev->type == SESSION_EV_LINK_DOWN) {
        if (b->tr.fd >= 0 && b->up) {
            /* e.g. a DISCONNECT behind a backlog; best effort, the socket is non-blocking,
             * but it may take the whole of it now */
            transport_unlimit(&b->tr);
            flush(b);
        }
        close_link(b);
    }
    b->on_event(b->userdata, ev);
}

static void on_trace(void *userdata, bool out, const MqttPacket *pkt, View raw)
{
    (void)userdata;
    log_packet(out, pkt, raw);
}

static void attempt_failed(Broker *b, int code, const char *reason)
{
    close_link(b);
    session_transport_down(b->session, now_ms(), code, reason);
}

static void on_resolved(void *userdata, struct addrinfo *res, int gai_error);

/* Resolve host a, keeping its name and port for the rest of the try. */
static void start_addr(Broker *b, const BrokerAddr *a)
{
    char *host = strdup(a->host);
    if (!host) {
        attempt_failed(b, ENOMEM, "out of memory starting a connection attempt");
        return;
    }
    free(b->attempt_host);
    b->attempt_host = host;
    b->attempt_port = a->port ? a->port : b->cfg->broker.port;
    unsigned port = b->attempt_port;
    snprintf(b->peer, sizeof(b->peer), strchr(host, ':') ? "[%s]:%u" : "%s:%u", host, port);
    int r = resolve_start(b->loop, host, port, on_resolved, b, &b->resolving);
    if (r < 0) {
        char reason[400];
        snprintf(reason, sizeof(reason), "resolve %s: %s", b->peer, strerror(-r));
        attempt_failed(b, -r, reason);
    }
}

/* The current host (b->host) of the configured list. */
static void start_host(Broker *b)
{
    start_addr(b, &b->cfg->broker.addrs[b->host]);
}

static void forget_redirect(Broker *b)
{
    free(b->redirect.host);
    b->redirect = (BrokerAddr){0};
}

/* MQTT 5: the server the broker named when it sent us away, tried once before the list. */
static bool start_redirect(Broker *b)
{
    char ref[256];
    if (!session_redirect(b->session, ref, sizeof(ref))) {
        return false;
    }
    forget_redirect(b);
    /* The standard leaves its form open: the first of space-separated "host[:port]"s. */
    if (config_parse_addr(ref, strcspn(ref, " "), &b->redirect) < 0) {
        log_warning("the broker named a server we cannot read (%s): trying the configured hosts",
                    ref);
        return false;
    }
    log_info("the broker sent us to %s: trying it first", ref);
    start_addr(b, &b->redirect);
    return true;
}

/* The current host failed with `reason`: go on with the next one, or end the attempt. */
static void next_host(Broker *b, int code, const char *reason)
{
    if (b->redirect.host) { /* the server we were sent to: back to the configured hosts */
        forget_redirect(b);
        log_info("%s; trying the configured broker hosts", reason);
        if (b->addrs) {
            freeaddrinfo(b->addrs);
            b->addrs = b->addr = NULL;
        }
        start_host(b);
        return;
    }
    size_t n = b->cfg->broker.n_addrs;
    b->host = (b->host + 1) % n;
    if (++b->hosts_tried >= n) {
        attempt_failed(b, code, reason);
        return;
    }
    log_info("%s; trying the next broker host", reason);
    if (b->addrs) {
        freeaddrinfo(b->addrs);
        b->addrs = b->addr = NULL;
    }
    start_host(b);
}

static void on_resolved(void *userdata, struct addrinfo *res, int gai_error)
{
    Broker *b = userdata;
    b->resolving = NULL;
    if (!res) {
        char reason[400];
        snprintf(reason, sizeof(reason), "resolve %s: %s", b->peer, gai_strerror(gai_error));
        next_host(b, EHOSTUNREACH, reason);
        return;
    }
    b->addrs = b->addr = res;
    try_address(b);
}

static void addr_text(const struct addrinfo *ai, char *out, size_t n)
{
    char ip[INET6_ADDRSTRLEN] = "?";
    unsigned port = 0;
    if (ai->ai_family == AF_INET) {
        const struct sockaddr_in *s = (const void *)ai->ai_addr;
        inet_ntop(AF_INET, &s->sin_addr, ip, sizeof(ip));
        port = ntohs(s->sin_port);
        snprintf(out, n, "%s:%u", ip, port);
    } else if (ai->ai_family == AF_INET6) {
        const struct sockaddr_in6 *s = (const void *)ai->ai_addr;
        inet_ntop(AF_INET6, &s->sin6_addr, ip, sizeof(ip));
        port = ntohs(s->sin6_port);
        snprintf(out, n, "[%s]:%u", ip, port);
    } else {
        snprintf(out, n, "?");
    }
}

static void watch(Broker *b, int events)
{
    ev_io_stop(b->loop, &b->io);
    ev_io_set(&b->io, b->tr.fd, events);
    ev_io_start(b->loop, &b->io);
}

/* The stream is ready for MQTT: CONNECT goes out. */
static void link_up(Broker *b)
{
    b->up = true;
    b->handshaking = false;
    b->hosts_tried = 0;
    if (b->tr.tls) {
        log_debug("TLS connected to %s (%s, %s%s)", b->peer, tls_version(b->tr.tls),
                  tls_cipher(b->tr.tls), tls_resumed(b->tr.tls) ? ", session resumed" : "");
    }
    session_transport_up(b->session, now_ms());
    flush(b);
    set_more(b, b->up && transport_pending(&b->tr)); /* read with the handshake's last record */
}

static void handshake(Broker *b)
{
    char err[300], reason[700];
    int r = transport_handshake(&b->tr, err, sizeof(err));
    if (r == 0) {
        link_up(b);
    } else if (r == -EAGAIN) {
        watch(b, b->tr.want);
    } else {
        snprintf(reason, sizeof(reason), "TLS handshake with %s failed: %s", b->peer, err);
        attempt_failed(b, EPROTO, reason);
    }
}

/* TCP is up: TLS first when configured. */
static void tcp_up(Broker *b)
{
    log_debug("TCP connected to %s (%s)", b->peer, b->attempt_host);
    char err[300], phase[400];
    if (transport_start_tls(&b->tr, b->tls, b->cfg, b->attempt_host, err, sizeof(err)) < 0) {
        attempt_failed(b, EPROTO, err);
        return;
    }
    if (!b->tr.tls) {
        link_up(b);
        return;
    }
    snprintf(phase, sizeof(phase), "TLS handshake with %s", b->peer);
    session_set_phase(b->session, phase);
    b->handshaking = true;
    handshake(b);
}

/* Try b->addr; on an immediate failure move on to the next address or host. */
static void try_address(Broker *b)
{
    int r = -ENOENT;
    char reason[400] = "";
    while (b->addr) {
        char where[INET6_ADDRSTRLEN + 10];
        addr_text(b->addr, where, sizeof(where));
        r = transport_connect(&b->tr, b->addr->ai_addr, b->addr->ai_addrlen);
        snprintf(b->peer, sizeof(b->peer), "%s", where);
        if (r == 0) {
            tcp_up(b);
            return;
        }
        if (r == -EINPROGRESS) {
            char phase[400];
            snprintf(phase, sizeof(phase), "TCP connect to %s", where);
            session_set_phase(b->session, phase);
            watch(b, EV_WRITE);
            return;
        }
        snprintf(reason, sizeof(reason), "connect to %s: %s", where, strerror(-r));
        log_debug("%s", reason);
        b->addr = b->addr->ai_next;
    }
    next_host(b, -r, reason);
}

static void on_connect_result(Broker *b)
{
    int r = transport_connect_result(&b->tr);
    if (r == 0) {
        tcp_up(b);
        return;
    }
    char reason[400];
    snprintf(reason, sizeof(reason), "connect to %s: %s", b->peer, strerror(-r));
    log_debug("%s", reason);
    ev_io_stop(b->loop, &b->io);
    transport_close(&b->tr);
    b->addr = b->addr->ai_next;
    if (b->addr) {
        try_address(b);
    } else {
        next_host(b, -r, reason);
    }
}

static void on_readable(Broker *b)
{
    uint8_t buf[READ_CHUNK];
    /* Bounded per wake-up (1 MiB, or 1024 TLS records) so one busy broker cannot starve
     * local clients. */
    size_t got = 0;
    for (int i = 0; b->up; i++) {
        if (i == 1024 || got >= 16 * READ_CHUNK) {
            set_more(b, transport_pending(&b->tr)); /* the rest in this iteration's prepare */
            return;
        }
        ssize_t n = transport_read(&b->tr, buf, sizeof(buf));
        if (n == -EAGAIN) {
            break;
        }
        if (n <= 0) {
            char reason[700];
            /* A plain MQTT client on a TLS port is dropped by the broker right away. */
            const char *hint = b->session->state == SESSION_CONNACK_WAIT && !b->tr.tls
                                   ? " before CONNACK (a TLS port? see [tls] enabled)"
                                   : "";
            if (n == 0) {
                snprintf(reason, sizeof(reason), "%s closed the connection%s", b->peer, hint);
            } else if (n == -EPROTO) {
                snprintf(reason, sizeof(reason), "TLS error from %s: %s", b->peer,
                         tls_last_error(b->tr.tls));
            } else {
                snprintf(reason, sizeof(reason), "read from %s: %s%s%s", b->peer, strerror((int)-n),
                         hint, refused_after_handshake(b));
            }
            session_transport_down(b->session, now_ms(), n == 0 ? ECONNRESET : (int)-n, reason);
            return;
        }
        session_input(b->session, buf, (size_t)n, now_ms());
        got += (size_t)n;
        /* A short plain read emptied the socket; TLS gives a record at a time: on to EAGAIN. */
        if ((size_t)n < sizeof(buf) && !b->tr.tls) {
            break;
        }
    }
}

/* Read, then, when the input made acknowledgements to send, let the daemon write what it made
 * for local clients first (broker_kick sends the link's output). Without acknowledgements
 * waiting the deliveries go at the loop's prepare as usual, together with the replies: an
 * early write per read cost QoS 0 with one publisher 10-20 % of its throughput here. */
static void read_input(Broker *b)
{
    on_readable(b);
    if (b->on_input_done && buf_size(&b->session->out)) {
        b->on_input_done(b->userdata);
    }
}

static void on_io(struct ev_loop *loop, ev_io *w, int revents)
{
    Broker *b = (Broker *)((char *)w - offsetof(Broker, io));
    (void)loop;
    (void)revents;
    if (b->handshaking) {
        handshake(b);
    } else if (!b->up) {
        on_connect_result(b);
    } else {
        /* Read on any readiness: with TLS, a write readiness may be what a read waited for. */
        read_input(b);
    }
    broker_kick(b);
}

/* Requests of this loop iteration go to the broker in one write. */
static void on_prepare(struct ev_loop *loop, ev_prepare *w, int revents)
{
    (void)loop;
    (void)revents;
    Broker *b = (Broker *)((char *)w - offsetof(Broker, prepare));
    if (ev_is_active(&b->more)) {
        set_more(b, false);
        if (transport_pending(&b->tr)) { /* records in memory; else a backlog: the kick below */
            read_input(b); /* may set it again: the idle then keeps the loop from sleeping */
        }
    }
    broker_kick(b);
}

static void on_more(struct ev_loop *loop, ev_idle *w, int revents)
{
    (void)loop, (void)w, (void)revents; /* its being active is its work: on_prepare reads */
}

static void on_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    Broker *b = (Broker *)((char *)w - offsetof(Broker, timer));
    (void)loop;
    (void)revents;
    broker_kick(b);
}

void broker_kick(Broker *b)
{
    int64_t now = now_ms();
    if (session_should_connect(b->session, now)) {
        b->hosts_tried = 0;
        if (b->rewind_hosts || b->host >= b->cfg->broker.n_addrs) {
            b->host = 0;
        }
        b->rewind_hosts = false;
        forget_redirect(b);
        if (!start_redirect(b)) {
            start_host(b);
        }
    }
    int64_t next = session_tick(b->session, now);
    if (b->up) {
        flush(b);
        /* The session stopped encoding at its high-water mark and the socket took it all: the
         * next step goes in the next loop iteration, without sleeping (and without waiting for
         * a timer or a client: a drained backlog once waited for the keepalive). Local clients
         * get their turns between the steps. */
        if (b->up && b->session->backlogged && !buf_size(&b->session->out)) {
            set_more(b, true);
        }
    }
    ev_timer_stop(b->loop, &b->timer);
    if (next != INT64_MAX) {
        double after = next > now ? (double)(next - now) / 1000.0 : 0.0;
        ev_timer_set(&b->timer, after, 0.0);
        ev_timer_start(b->loop, &b->timer);
    }
}

int broker_init(Broker *b, struct ev_loop *loop, const Config *cfg, TlsContext *tls,
                const char *client_id, const char *password, const MqttMount *mount,
                broker_event_cb on_event, void *userdata)
{
    *b = (Broker){.loop = loop,
                  .cfg = cfg,
                  .mount = mount,
                  .tls = tls,
                  .on_event = on_event,
                  .userdata = userdata};
    b->tr.fd = -1;
    ev_io_init(&b->io, on_io, -1, EV_READ);
    ev_timer_init(&b->timer, on_timer, 0.0, 0.0);
    ev_prepare_init(&b->prepare, on_prepare);
    ev_prepare_start(loop, &b->prepare);
    ev_idle_init(&b->more, on_more);
    SessionConfig sc = session_config(cfg, client_id, password, mount);
    static const SessionCallbacks cb = {.event = on_session_event, .trace = on_trace};
    return session_new(&sc, &cb, b, &b->session);
}

int broker_configure(Broker *b, const Config *cfg, TlsContext *tls, const char *client_id,
                     const char *password)
{
    b->tls = tls;
    /* b->host is left alone: an attempt in progress goes on with it (next_host keeps it
     * below the new count); the next attempt starts over at the first host. */
    b->cfg = cfg;
    b->rewind_hosts = true;
    SessionConfig sc = session_config(cfg, client_id, password, b->mount);
    return session_configure(b->session, &sc);
}

void broker_reconnect(Broker *b)
{
    session_reconnect_now(b->session, now_ms());
    broker_kick(b);
}

void broker_stop(Broker *b)
{
    ev_prepare_stop(b->loop, &b->prepare);
    session_disconnect(b->session, now_ms());
    close_link(b);
    ev_timer_stop(b->loop, &b->timer);
}

void broker_free(Broker *b)
{
    ev_prepare_stop(b->loop, &b->prepare);
    close_link(b);
    ev_timer_stop(b->loop, &b->timer);
    session_free(b->session);
    b->session = NULL;
    free(b->attempt_host);
    b->attempt_host = NULL;
    forget_redirect(b);
}

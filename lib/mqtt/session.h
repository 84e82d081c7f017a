/* SPDX-License-Identifier: MIT */
/*
 * The MQTT client session, without I/O: one long-lived session with one broker.
 *
 * The caller (daemon/broker.c) owns the transport and the clock. It tells the session what
 * happened - the transport came up or went down, bytes arrived, time passed, a local client
 * asked to publish or subscribe - and the session answers with bytes to write (`session->out`),
 * events (one callback), and the next moment it wants to be woken (session_tick's result).
 *
 * Link states, and who moves between them:
 *
 *     IDLE --session_should_connect()--> CONNECTING --session_transport_up()--> CONNACK_WAIT
 *       ^                                    |                                      |
 *       |  <--transport down, timeout,       |                        CONNACK accepted
 *       |     protocol error, refusal--------+--------------------------------------+
 *       |                                                                           v
 *       +---------------- keepalive silence, transport down, reconnect ------ CONNECTED
 *
 * and STOPPED after session_disconnect(): DISCONNECT written, no reconnects.
 *
 * Outgoing messages wait in one FIFO and go out in order; QoS 1/2 ones then sit in the
 * in-flight list (at most max_inflight) until PUBACK / PUBCOMP. While the link is down both
 * are kept, bounded by max_messages and max_bytes; after a reconnect the in-flight ones are
 * re-sent (DUP set when the broker resumed the session) before anything newer.
 *
 * Requests carry an opaque `req` pointer that comes back in their completion event. The
 * session never dereferences it; session_abandon() forgets it (the caller timed the request
 * out), after which the message is still delivered but reported to nobody.
 */
#pragma once

#include "buf.h"
#include "hashmap.h"
#include "mqtt/codec.h"

typedef struct Session Session;
typedef struct SessionMsg SessionMsg;

enum session_state {
    SESSION_IDLE,         /* no link; waiting for the retry time */
    SESSION_CONNECTING,   /* the caller is opening the transport */
    SESSION_CONNACK_WAIT, /* CONNECT written */
    SESSION_CONNECTED,
    SESSION_STOPPED, /* after session_disconnect() */
};

const char *session_state_name(enum session_state st);

/* Which MQTT the session speaks (a zeroed config: 3.1.1). AUTO tries 5 and, when the broker
 * refuses that protocol version, uses 3.1.1 until session_configure() is called again. */
enum session_protocol { SESSION_PROTOCOL_311, SESSION_PROTOCOL_5, SESSION_PROTOCOL_AUTO };

typedef struct SessionConfig {
    View client_id;          /* empty (MQTT 5): the broker assigns one, reused on reconnect */
    View username, password; /* used when has_username / has_password */
    bool has_username, has_password;
    uint16_t keepalive; /* seconds; 0 = none */
    bool clean_session;
    bool will;
    View will_topic, will_payload;
    uint8_t will_qos;
    bool will_retain;
    int64_t connect_timeout_ms; /* transport + CONNACK */
    int64_t reconnect_min_ms, reconnect_max_ms;
    uint16_t max_inflight;
    size_t max_messages, max_bytes; /* outgoing queue + in flight */
    size_t max_packet;              /* largest packet accepted from the broker */
    uint64_t seed;                  /* for the backoff jitter */
    /* MQTT 5 */
    uint8_t protocol;             /* enum session_protocol */
    uint32_t session_expiry;      /* seconds the broker keeps the session after the link */
    uint16_t receive_maximum;     /* incoming QoS 1/2 in flight we accept; 0 = 65535 */
    uint16_t topic_alias_maximum; /* incoming topic aliases we accept */
    bool topic_aliases;           /* use outgoing topic aliases */
    bool request_response_info;
    uint32_t will_delay, will_message_expiry; /* seconds; expiry 0 = none */
    View will_content_type;                   /* empty = none */
    /* [topics] mount: applied at the wire, so that everything above the session (events,
     * subscriptions, the router) sees local topics. NULL: none. The caller's; it outlives
     * the session. */
    const struct MqttMount *mount;
    /* A token bucket one second deep for PUBLISH packets toward the broker, resends included:
     * packets a second and bytes a second (0: no limit). Messages wait, never dropped. */
    uint32_t max_publish_rate;
    uint64_t max_publish_bytes;
} SessionConfig;

/* What the broker's CONNACK allows for the life of the link (MQTT 5; with 3.1.1, and before
 * the first CONNACK, what the standard assumes when a property is absent). */
typedef struct SessionLimits {
    uint16_t receive_maximum;     /* our QoS 1/2 messages in flight */
    uint8_t maximum_qos;          /* 0, 1 or 2 */
    bool retain_available;        /* retained messages accepted */
    uint32_t maximum_packet_size; /* 0 = no limit but MQTT's */
    uint16_t topic_alias_maximum; /* aliases the broker accepts from us */
    bool wildcard_available, subscription_ids_available, shared_available;
    int32_t server_keep_alive; /* the keepalive the broker imposed, -1 when it did not */
} SessionLimits;

enum session_event_type {
    SESSION_EV_CONNECTED,      /* .connected */
    SESSION_EV_LINK_DOWN,      /* .down: close the transport now (after writing `out`) */
    SESSION_EV_MESSAGE,        /* .message: a PUBLISH from the broker, delivered once */
    SESSION_EV_PING_SENT,      /* no payload */
    SESSION_EV_PING_ANSWERED,  /* .ping */
    SESSION_EV_PUBLISH_DONE,   /* .done: the broker has it (QoS 0 written, PUBACK, PUBCOMP) */
    SESSION_EV_SUBSCRIBE_DONE, /* .done: result = granted QoS, or -EPERM for 0x80 */
    SESSION_EV_UNSUBSCRIBE_DONE,
    SESSION_EV_BARRIER_DONE, /* .done: everything the broker sent before it has arrived */
    /* With a caller's durable copy (spool_id), the steps it must record before the bytes
     * that follow them reach the broker, so a restart resumes exactly where it stopped: */
    SESSION_EV_PUBLISH_SENT, /* .sent: a QoS 1/2 message got its packet id */
    SESSION_EV_PUBREC,       /* .sent: a QoS 2 message got its PUBREC */
    /* Incoming QoS 2 ids between PUBREC and PUBREL (a duplicate is not delivered again): */
    SESSION_EV_QOS2_HELD,     /* .packet_id: delivered, PUBREC written */
    SESSION_EV_QOS2_RELEASED, /* .packet_id: PUBREL received, PUBCOMP written */
    /* The broker refused a subscription nobody waits to hear about: one the session restored
     * after a reconnect (then forgotten), or a request whose req was forgotten or NULL. */
    SESSION_EV_SUBSCRIPTION_LOST, /* .lost */
    /* Every SUBACK that grants a filter, restores included (before its SUBSCRIBE_DONE). */
    SESSION_EV_SUBSCRIBED, /* .granted */
    /* A message's MQTT 5 properties were left out: the link speaks 3.1.1 (auto fell back
     * after the message was taken). No payload; see stats.properties_dropped. */
    SESSION_EV_PROPERTIES_DROPPED,
};

typedef struct SessionEvent {
    enum session_event_type type;
    union {
        struct {
            bool session_present;
        } connected;
        struct {
            const char *reason; /* human text, also kept as last_error unless clean */
            int code;     /* errno, MQTT_E_*, CONNACK rc or reason code (refused); 0 = clean */
            bool refused; /* CONNACK refusal: code is the return code */
            bool was_connected; /* the link had reached CONNECTED */
            int broker_reason;  /* MQTT 5: the broker's DISCONNECT reason code, -1 none */
        } down;
        struct {
            const MqttPublish *publish; /* its topic resolved when it came by Topic Alias */
            const MqttProps *props;     /* MQTT 5 (empty with 3.1.1): Subscription Identifiers
                                           name the subscriptions this copy is for */
            bool unmounted; /* with a mount point: it came outside it (an unmounted filter's) */
        } message;
        struct {
            int64_t rtt_ms;
        } ping;
        struct {
            void *req;  /* NULL once abandoned (PUBLISH_DONE still comes for a spool_id) */
            int result; /* >= 0 done; -EPERM: the broker refused (reason); other -errno */
            uint64_t spool_id;
            uint8_t reason;     /* MQTT 5 reason code of the answer (0 with 3.1.1) */
            View reason_string; /* MQTT 5, valid during the call; empty when none */
        } done;
        struct {
            uint64_t spool_id;
            uint16_t packet_id;
        } sent;
        uint16_t packet_id;
        struct {
            View filter;  /* valid during the call */
            uint8_t code; /* the SUBACK return code */
        } lost;
        struct {
            View filter; /* valid during the call */
            uint8_t qos; /* granted */
        } granted;
    };
} SessionEvent;

typedef struct SessionCallbacks {
    void (*event)(void *userdata, const SessionEvent *ev);
    /* Optional: every packet as it is written (out = true) or read, for packet logging. */
    void (*trace)(void *userdata, bool out, const MqttPacket *pkt, View raw);
} SessionCallbacks;

/* Counters behind the stats keys (averages are derived from sums and counts). */
/* Round-trip histograms (publish, ping): upper bounds in ms of all but the last bucket, which
 * counts what is above the highest. */
#define SESSION_RTT_BUCKETS 12
extern const uint32_t session_rtt_bounds_ms[SESSION_RTT_BUCKETS];
/* The q-quantile (0 < q <= 1) of a histogram as the upper bound (ms) of the bucket it falls in:
 * -1 when it counts nothing, INT64_MAX above the highest bound. */
int64_t session_rtt_quantile(const uint64_t *hist, double q);

typedef struct SessionStats {
    uint64_t packets_sent, packets_received, bytes_sent, bytes_received;
    uint64_t pub_ok, pub_fail;
    uint64_t pub_rtt_sum_ms, pub_rtt_n;
    uint64_t pub_bytes_sum, pub_bytes_n; /* PUBLISH packets sent */
    uint64_t sub_bytes_sum, sub_bytes_n; /* PUBLISH packets received */
    uint64_t connections_sent, connections_failed;
    uint64_t ping_sent, ping_received, ping_rtt_sum_ms;
    uint64_t reconnects; /* links re-established after a loss */
    uint64_t messages_received, duplicates_dropped;
    uint64_t subscriptions_lost; /* restored subscriptions the broker refused */
    uint64_t topic_aliases_used; /* PUBLISH packets sent with an alias instead of the topic */
    uint64_t messages_expired;   /* outgoing messages whose Message Expiry passed in the queue */
    uint64_t properties_dropped; /* outgoing messages whose MQTT 5 properties a 3.1.1 link lost */
    uint64_t rate_limited_ms;    /* time the publish rate limit held messages back (ended spells) */
    uint64_t pub_rtt_hist[SESSION_RTT_BUCKETS + 1], ping_rtt_hist[SESSION_RTT_BUCKETS + 1];
} SessionStats;

typedef struct SessionPublish {
    View topic, payload;
    uint8_t qos;
    bool retain;
    uint64_t spool_id; /* the caller's durable copy, named again in PUBLISH_DONE; 0 = none */
    /* Resuming a message an earlier run had sent (from the durable copy): its packet id, and
     * whether its PUBREC came. It goes in flight with that id, DUP or PUBREL next. */
    uint16_t packet_id;
    bool pubrec;
    /* MQTT 5 (left out, and counted in properties_dropped, on a 3.1.1 link): the message's
     * properties as a PUBLISH block (mqtt_props_encode) without Topic Alias or Message Expiry,
     * and when it expires (session clock; 0 = never). Not yet sent by then, it never is:
     * PUBLISH_DONE -ETIME, counted in messages_expired; sent, it carries what remains. */
    View props;
    int64_t expires_at;
} SessionPublish;

/* The whole session's public state; the rest is private to session.c. */
struct Session {
    Buf out; /* bytes for the broker: the caller writes them and buf_consume()s */
    enum session_state state;
    SessionStats stats;
    char last_error[512]; /* "" when none */
    char phase[160];      /* see session_set_phase */
    bool session_present;
    int64_t connected_at, retry_at;
    int64_t last_ping_rtt_ms; /* -1 before the first answer */
    size_t queued, inflight, queued_bytes;
    size_t subscriptions;
    int64_t rate_limited_since; /* the rate limit holds messages back since then; 0: it does not */
    /* The last tick stopped encoding the queue because `out` held its high-water mark: tick
     * again as soon as `out` is written, or the rest waits for the next event. */
    bool backlogged;
    uint8_t protocol;           /* MQTT_V5 or MQTT_V311: of the current (or last) link */
    SessionLimits limits;       /* the current (or last) link's */
    char *assigned_client_id;   /* MQTT 5: the id the broker gave us, or NULL */
    char *response_information; /* MQTT 5: the CONNACK\'s Response Information, or NULL */
    char server_reference[256]; /* MQTT 5: where the broker sent us (0x9C, 0x9D), or "" */
};

int session_new(const SessionConfig *cfg, const SessionCallbacks *cb, void *userdata,
                Session **ret);

/* The reconnect delay after `*attempts` failed ones (counting this one: *attempts grows): an
 * exponential window from min to max, and a point in it drawn from `random`. FULL (the
 * session's): anywhere in [0, window]; after an overload signal (a refused connection, Server
 * busy, Quota exceeded, use another server) the window is doubled twice more, up to twice max.
 * EQUAL (what 0.1 did, no signals; kept for the comparison in tests/sim): [window/2, window]. */
enum session_jitter { SESSION_JITTER_FULL, SESSION_JITTER_EQUAL };
int64_t session_backoff_ms(enum session_jitter jitter, unsigned *attempts, bool overload,
                           int64_t min_ms, int64_t max_ms, uint64_t random);
void session_free(Session *s);

/* Replace the configuration (copied); it takes effect at the next connect. */
int session_configure(Session *s, const SessionConfig *cfg);

/* True when the caller should open the transport now (moves IDLE -> CONNECTING). */
bool session_should_connect(Session *s, int64_t now);
/* The transport is open: CONNECT is written to `out`. */
void session_transport_up(Session *s, int64_t now);
/* The transport failed or closed. `code` is a positive errno. */
void session_transport_down(Session *s, int64_t now, int code, const char *reason);
/* What the caller is doing in CONNECTING (e.g. "TLS handshake with host:port"), named in
 * the reason of a connect timeout. Copied. */
void session_set_phase(Session *s, const char *phase);
/* Bytes from the broker. On a protocol violation the link is declared down (LINK_DOWN). */
void session_input(Session *s, const void *data, size_t n, int64_t now);
/* Let time pass; returns the next time (ms, same clock) the session wants a tick. */
int64_t session_tick(Session *s, int64_t now);

/* MQTT 5: the server the broker named (Server Reference with 0x9C or 0x9D) for the next
 * connect, once: true with it in out. */
bool session_redirect(Session *s, char *out, size_t n);
/* Drop the link (if any) cleanly and connect again right away. */
void session_reconnect_now(Session *s, int64_t now);
/* Graceful stop: DISCONNECT written if connected, then STOPPED. */
void session_disconnect(Session *s, int64_t now);

/* Queue a publish. -ENOBUFS when the queue is full (counted as a failure), -EINVAL for an
 * invalid topic or QoS, -EMSGSIZE when its PUBLISH would be larger than the largest packet
 * the link carries (session_max_publish), -EEXIST when a resumed packet id is in use; on an
 * MQTT 5 link, -ENOTSUP when its QoS is above the broker's Maximum QoS or it is retained and
 * the broker has no Retain Available (a message queued before the link learnt that fails
 * the same way in its PUBLISH_DONE, without being sent).
 * *ret_msg (may be NULL) identifies it for session_abandon(). */
int session_publish(Session *s, const SessionPublish *p, void *req, int64_t now,
                    SessionMsg **ret_msg);
/* The caller stops waiting for this message (timeout or its client left): no completion
 * event will name `req` any more. With `failed`, the publish counts as failed in the stats.
 * `msg` is what session_publish returned for a request that is still pending. */
void session_abandon(Session *s, SessionMsg *msg, bool failed);
/* The largest PUBLISH packet the link carries (the broker's Maximum Packet Size, else MQTT's
 * 256 MiB), to compare with mqtt_publish_size. */
size_t session_max_publish(const Session *s);
/* Incoming QoS 2 ids an earlier run had acknowledged with PUBREC but not seen released: a
 * bitmap of 65536 bits. Duplicates of them are not delivered again if the broker resumes the
 * session (they are forgotten if it does not). */
void session_restore_incoming(Session *s, const uint64_t *held);

typedef struct SessionSubscribe {
    View filter;
    uint8_t qos;
    /* MQTT 5: its subscription identifier (1..268435455; 0 = none), sent when the broker
     * has them; messages for it then name it (SESSION_EV_MESSAGE). */
    uint32_t subid;
    /* MQTT 5 subscription options (ignored by a 3.1.1 link), kept for restores. */
    bool no_local, retain_as_published;
    uint8_t retain_handling; /* 0, 1 or 2 */
} SessionSubscribe;

/* Ask the broker for a subscription (sent now, or when connected). Remembered and restored
 * after reconnects once granted. -EINVAL for a bad filter, QoS or identifier. */
int session_subscribe(Session *s, const SessionSubscribe *sub, void *req, int64_t now);
/* Forget a subscription and tell the broker (now or at the next connect). */
int session_unsubscribe(Session *s, View filter, void *req, int64_t now);
/* A barrier behind the requests made so far: once every one of them is answered (SUBACK,
 * UNSUBACK), a PINGREQ; its PINGRESP completes the barrier (BARRIER_DONE). Nothing in the
 * standard orders a PINGRESP against the answers to earlier requests, so the PINGREQ is not
 * sent before those answers are in: by its PINGRESP, what the broker sent for them - such as
 * the retained messages that follow a SUBACK - has arrived too. Re-sent after a reconnect. */
int session_barrier(Session *s, void *req);
/* Forget `req` in every pending subscribe/unsubscribe/barrier request. */
void session_forget_req(Session *s, void *req);
/* The same for every request pointer that is a key of `reqs` (keyed by the pointer's bytes),
 * in one pass: a client that leaves with thousands of requests pending. */
void session_forget_reqs(Session *s, const HashMap *reqs);

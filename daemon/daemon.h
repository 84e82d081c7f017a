/* SPDX-License-Identifier: MIT */
/*
 * The request layer's state: the Daemon, and a Client (a connection with what its requests
 * made). Each module's functions are in its own header; daemon/README.md draws the graph,
 * top to bottom, and names the owner of each field.
 */
#pragma once

#include <ev.h>
#include <jansson.h>
#include <sys/socket.h>
#include <sys/types.h>

#include "broker.h"
#include "config.h"
#include "dlist.h"
#include "names.h"
#include "router.h"
#include "server.h"
#include "spares.h"
#include "spool.h"

typedef struct Daemon Daemon;
typedef struct LocalSession LocalSession; /* sessions.c */
typedef struct Client Client;
typedef struct Waiter Waiter;

/* A uid as a map key (per-uid counts). */
static inline View uid_key(const uid_t *uid)
{
    return VIEW(uid, sizeof(*uid));
}

/* What a RouterTarget is (RouterTarget.kind): whose messages bridge.c delivers. */
enum { TARGET_CLIENT, TARGET_RPC, TARGET_SESSION };

/* What holds subscriptions: a client, or a named local session, which outlives its
 * connections. subs.c owns the table. */
typedef struct SubHolder {
    RouterTarget target;
    HashMap subs;        /* filter -> ClientSub (subs.c) */
    uid_t uid;           /* whose per-uid count its subscriptions are in */
    size_t filter_bytes; /* the length of its filters, together (subs.c) */
} SubHolder;

/* A local client as the request layer sees it: a connection (server.h) and what its
 * requests made. */
struct Client {
    Conn conn; /* first: the connection layer allocates a Client (ops_server_callbacks) */
    Daemon *d;
    char *user;         /* name of its uid, or NULL */
    NameWait naming;    /* while its user name is looked up (admission waits for it) */
    ev_timer admission; /* how long admission waits for the name (access.c) */
    AclView acl;        /* the [acl] rules that apply to this peer, %u substituted */
    bool counted;       /* in Daemon.uid_conns (access.c) */
    bool events_connection, events_ping;
    SubHolder own;         /* its subscriptions, outside a session */
    SubHolder *holder;     /* &own, or its named session's (sessions.c) */
    LocalSession *session; /* the named session it is in, or NULL (sessions.c) */
    DList waiters;         /* Waiter.link */
    size_t n_waiters;
    bool reqs_forgotten; /* closing: the session forgot all its waiters' requests at once */
};

static inline Client *client_of(Conn *c)
{
    return container_of(c, Client, conn);
}

/* The client whose connection is linked at l (in Daemon.server.conns): walk them with
 * dlist_for_each_safe, as a step may close the client. */
static inline Client *client_at(DList *l)
{
    return client_of(container_of(l, Conn, link));
}

/* The request op's state (rpc.c owns it). */
typedef struct Rpc {
    char *topic;         /* where responses arrive, once chosen */
    RouterTarget target; /* the daemon's own holding of it (internal) */
    bool held;
    HashMap waiting;    /* correlation data -> Waiter */
    uint64_t nonce;     /* random per run: names the fallback response topic */
    uint64_t unmatched; /* responses that named no waiting request */
} Rpc;

typedef struct DaemonStats {
    uint64_t messages_delivered, messages_dropped;
} DaemonStats;

struct Daemon {
    struct ev_loop *loop;
    Config cfg;
    const char *config_path;
    const char *socket_override, *broker_override;
    int verbosity;
    char *client_id;
    char *password;
    TlsContext *tls; /* [tls] loaded at start and reload; NULL when off */
    Broker broker;
    Router router;
    Spool *spool; /* NULL without [queue] spool_dir */
    DaemonStats stats;
    HashMap uid_subs;            /* uid -> subscriptions held by its clients (subs.c) */
    HashMap uid_conns;           /* uid -> its connections (access.c) */
    Names names;                 /* peers' user names (names.c, for access.c) */
    Rpc rpc;                     /* the request op (rpc.c) */
    HashMap sessions;            /* name -> LocalSession (sessions.c) */
    Spares spare_waiters;        /* ended waiters without a filter, for reuse (waiters.c) */
    MqttMount mount;             /* [topics] mount, expanded (main.c) */
    bool props_drop_logged;      /* MQTT 5 fields lost to a 3.1.1 link: logged once (bridge.c) */
    char lost_subscription[400]; /* the last restored subscription the broker refused */
    int64_t started_at;
    bool stopping;
    ev_timer grace;       /* at stop: time left for in-flight acknowledgements */
    ev_prepare stop_when; /* at stop: ends the loop once nothing is in flight */

    Server server; /* the local socket and its connections */
};

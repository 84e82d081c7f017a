/* SPDX-License-Identifier: MIT */
/*
 * The daemon's shared state: the Daemon and Client structs that the modules below work on,
 * and the connection layer's interface (server.c). Each module's own functions are in its
 * own header; daemon/README.md draws the graph, top to bottom.
 */
#pragma once

#include <ev.h>
#include <jansson.h>
#include <sys/socket.h>
#include <sys/types.h>

#include "broker.h"
#include "config.h"
#include "ipc/ndjson.h"
#include "ipc/protocol.h"
#include "router.h"
#include "spool.h"

typedef struct Daemon Daemon;
typedef struct Client Client;
typedef struct Waiter Waiter;
typedef struct ServerCallbacks ServerCallbacks;

/* Intrusive doubly-linked list, as in lib/mqtt/session.c. */
typedef struct DList {
    struct DList *prev, *next;
} DList;

static inline void dlist_init(DList *h)
{
    h->prev = h->next = h;
}

static inline bool dlist_empty(const DList *h)
{
    return h->next == h;
}

static inline void dlist_push(DList *h, DList *n)
{
    n->prev = h->prev;
    n->next = h;
    h->prev->next = n;
    h->prev = n;
}

static inline void dlist_remove(DList *n)
{
    n->prev->next = n->next;
    n->next->prev = n->prev;
    n->prev = n->next = n;
}

#define container_of(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

/* Each element of a list, its successor taken first: the body may unlink `pos` (closing a
 * client moves it to Daemon.closed). */
#define dlist_for_each_safe(pos, next, head)                                                       \
    for (DList *pos = (head)->next, *next = pos->next; pos != (head); pos = next, next = pos->next)

/* A uid as a map key (per-uid counts). */
static inline View uid_key(const uid_t *uid)
{
    return VIEW(uid, sizeof(*uid));
}

struct Client {
    DList link; /* in Daemon.clients, or Daemon.closed until freed */
    Daemon *d;
    int fd;
    ev_io io;
    uint64_t serial;
    pid_t pid;
    uid_t uid;
    gid_t gid;
    char *user;  /* name of uid, or NULL */
    AclView acl; /* the [acl] rules that apply to this peer, %u substituted */
    bool closed;
    bool eof; /* the client shut down its sending side: answer what is pending, then close */
    bool events_connection, events_ping;
    LineReader in;
    Buf out;
    RouterTarget target;
    HashMap subs;  /* filter -> ClientSub (subs.c) */
    DList waiters; /* Waiter.link */
    size_t n_waiters;
    uint64_t dropped; /* messages dropped since the last "dropped" event */
    bool counted;     /* in Daemon.uid_conns (access.c) */
};

typedef struct DaemonStats {
    uint64_t messages_delivered, messages_dropped, clients_accepted, clients_rejected;
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
    char lost_subscription[400]; /* the last restored subscription the broker refused */
    int64_t started_at;
    bool stopping;
    ev_timer grace;       /* at stop: time left for in-flight acknowledgements */
    ev_prepare stop_when; /* at stop: ends the loop once nothing is in flight */

    /* server */
    int listen_fd;
    bool socket_activated;
    char *socket_path; /* the path we bound (to unlink at exit) */
    ev_io listen_io;
    ev_prepare prepare;
    const ServerCallbacks *server_cb;
    DList clients, closed;
    size_t n_clients;
    uint64_t next_serial;
};

/* server.c */
/* What the connection layer asks of the layers above it, per connection. */
struct ServerCallbacks {
    /* A new peer: set up c (its credentials are in cred) or refuse it with a code and words
     * (<0); release() runs either way once c goes. */
    int (*admit)(Client *c, const struct ucred *cred, enum ipc_error *code, char *why, size_t n);
    void (*line)(Client *c, View line);      /* one request line */
    void (*overlong)(Client *c, size_t max); /* a line longer than ipc.max_line was skipped */
    void (*gone)(Client *c);                 /* c is closed: nothing more is sent to it */
    void (*release)(Client *c);              /* c is about to be freed */
};

int server_start(Daemon *d, const ServerCallbacks *cb);
void server_stop(Daemon *d);
/* Queue bytes for a client (replies: always; see client_send_message for events). */
void client_send(Client *c, View bytes);
void client_close(Client *c, const char *why);
/* Close a client that has sent EOF once nothing is left to answer or write. */
void client_finish_if_done(Client *c);

/* access.c */
int access_resolve(Config *cfg, char *err, size_t errlen);
int access_check_secrets(const Config *cfg, char *err, size_t errlen);
int access_client_init(Client *c, const struct ucred *cred);
/* After a reload: every client's view rebuilt, subscriptions no longer allowed dropped. */
void access_reload(Daemon *d);
/* Whether uid may have one more connection under [acl] max_connections_per_uid; when not,
 * `why` says so. */
bool access_uid_below_limit(Daemon *d, uid_t uid, char *why, size_t n);
/* c is closed: its connection no longer counts against its uid's limit. */
void access_client_gone(Client *c);

/* ops.c */
void ops_handle_line(Client *c, View line);
void ops_client_gone(Client *c);
/* The request layer as the connection layer sees it. */
extern const ServerCallbacks ops_server_callbacks;

/* bridge.c */
void bridge_on_event(void *userdata, const SessionEvent *ev);

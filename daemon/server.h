/* SPDX-License-Identifier: MIT */
/*
 * The connection layer: the Unix socket. It accepts peers, reads request lines, writes with
 * back-pressure and closes a connection at once but frees it later (never inside its own
 * callback). It knows nothing of requests, access rules or the broker: the layer above
 * supplies ServerCallbacks and embeds a Conn at the start of its own per-connection struct.
 *
 * Limits (from [ipc]): at most max_clients connections (the next peer is told why and
 * closed); request lines up to max_line (a longer one is skipped and reported); at most
 * client_buffer bytes queued toward one connection, past which its requests are not read
 * until it has caught up (conn_send always queues: the layer above decides what to drop,
 * with conn_queued, and counts it in Conn.dropped for the "dropped" event).
 */
#pragma once

#include <ev.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>

#include "buf.h"
#include "config.h"
#include "dlist.h"
#include "ipc/ndjson.h"
#include "ipc/protocol.h"

typedef struct Server Server;
typedef struct Conn Conn;

/* One peer. The layer above owns the struct it is embedded in (ServerCallbacks.conn_size). */
struct Conn {
    DList link; /* in Server.conns, or Server.closed until freed */
    Server *srv;
    int fd;
    ev_io io;
    uint64_t serial; /* for logs: the n-th connection since start */
    pid_t pid;       /* SO_PEERCRED at connect */
    uid_t uid;
    gid_t gid;
    bool admitted; /* the layer above accepted it: its requests are read */
    bool closed;
    bool eof; /* the peer shut down its sending side: answer what is pending, then close */
    /* Whole lines left over from its turn (LINES_PER_TURN): in Server.waiting, not reading
     * until they are served. */
    bool waiting;
    DList turn;
    /* Output queued in this loop iteration: in Server.unsent, written before the loop next
     * sleeps (without waiting a round for the socket to say it is writable). */
    bool unsent;
    DList flush;
    LineReader in;
    Buf out;
    uint64_t dropped; /* messages the layer above dropped since the last "dropped" event */
};

/* What the connection layer asks of the layer above, per connection. */
typedef struct ServerCallbacks {
    size_t conn_size; /* size of the layer's per-connection struct, whose first member is a Conn */
    /* A new peer (c->pid/uid/gid from the kernel). 0: admitted; 1: admission continues later
     * (conn_admit or conn_refuse, nothing is read meanwhile); <0: refused with a code and
     * words. release() runs whatever the answer, once c goes. */
    int (*admit)(Conn *c, enum ipc_error *code, char *why, size_t n);
    void (*line)(Conn *c, View line);      /* one request line */
    void (*overlong)(Conn *c, size_t max); /* a line longer than max_line was skipped */
    bool (*owes)(const Conn *c);           /* whether an answer is still owed to c */
    void (*gone)(Conn *c);                 /* c is closed: nothing more is sent to it */
    void (*release)(Conn *c);              /* c is about to be freed */
    /* Optional: c's output fell below half of [ipc] client_buffer after a write: room for
     * what was held back. */
    void (*drained)(Conn *c);
} ServerCallbacks;

struct Server {
    struct ev_loop *loop;
    const Config *cfg; /* [ipc]; the owner swaps its contents at reload */
    const ServerCallbacks *cb;
    void *userdata; /* the layer above's */
    int listen_fd;
    bool socket_activated;
    bool refusing;     /* stopping: new peers are told so */
    char *socket_path; /* the path we bound (to unlink at exit) */
    ev_io listen_io;
    ev_prepare prepare;
    ev_check turns;     /* serves the connections waiting for their turn */
    ev_idle keep_awake; /* active while one waits: the loop must not sleep */
    DList conns, closed, waiting, unsent;
    bool flushing;     /* in the flush of `unsent`: output queued now waits for EV_WRITE */
    size_t n_conns;    /* admitted or being admitted */
    size_t n_admitted; /* admitted: the clients the daemon serves */
    uint64_t next_serial, accepted, rejected;
};

/* Listen (on the socket systemd passed, else on cfg->ipc.socket). 0 or -errno (logged). */
int server_start(Server *s, struct ev_loop *loop, const Config *cfg, const ServerCallbacks *cb,
                 void *userdata);
/* Peers that connect from now on are refused: the daemon is stopping. */
void server_refuse_new(Server *s);
/* Write what was queued toward clients now rather than when the loop is about to sleep. */
void server_flush(Server *s);
/* [ipc] max_line changed (reload): applies to every connection's next line. */
void server_limits_changed(Server *s);
/* Write what is queued without waiting, close everything, stop listening, unlink. */
void server_stop(Server *s);

/* Queue bytes toward c (nothing once it is closed). */
void conn_send(Conn *c, View bytes);
/* Bytes queued toward c and not yet written. */
size_t conn_queued(const Conn *c);
/* Close c now (its fd, its watcher); it is freed later. Idempotent. */
void conn_close(Conn *c, const char *why);
/* Queue `last`, write what is queued as far as the socket takes it now (never waiting), and
 * close c: a last word before closing (e.g. a session taken over). */
void conn_close_after(Conn *c, View last, const char *why);
/* Admission (ServerCallbacks.admit returned 1) ended: c's requests are read from now. */
void conn_admit(Conn *c);
/* Admission ended in a refusal: c is told why and closed. */
void conn_refuse(Conn *c, enum ipc_error code, const char *why);
/* Close a peer that has sent EOF once nothing is left to answer or write. */
void conn_finish_if_done(Conn *c);

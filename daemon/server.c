/* SPDX-License-Identifier: MIT */
/*
 * The connection layer: see server.h. A connection is never freed inside its own callback:
 * conn_close() closes the socket at once and parks the struct on s->closed, which the
 * ev_prepare watcher empties before the loop next sleeps.
 */
#include "server.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "log.h"
#include "notify.h"

#define READ_CHUNK 65536
/* Requests served per client per loop iteration, so that every ready client gets its turn:
 * a client that floods waits for the next iteration, one that pings does not wait long. */
#define LINES_PER_TURN 64
/* Peers taken per wake-up of the listening socket, so that a flood cannot starve the rest. */
#define ACCEPT_BATCH 64

static void update_watcher(Conn *c)
{
    const Server *s = c->srv;
    bool backlog = buf_size(&c->out) > s->cfg->ipc.client_buffer;
    bool reading = c->admitted && !backlog && !c->eof && !c->waiting;
    /* Output to be flushed before the loop sleeps needs no EV_WRITE: asking for it and
     * dropping it again would cost a system call per message. */
    bool writing = buf_size(&c->out) && !c->unsent;
    int events = (reading ? EV_READ : 0) | (writing ? EV_WRITE : 0);
    if (c->io.events != events || !ev_is_active(&c->io)) {
        ev_io_stop(s->loop, &c->io);
        if (events) {
            ev_io_set(&c->io, c->fd, events);
            ev_io_start(s->loop, &c->io);
        }
    }
}

void conn_send(Conn *c, View bytes)
{
    if (c->closed) {
        return;
    }
    bool waiting = buf_size(&c->out) > 0; /* then it is in `unsent`, or watched for EV_WRITE */
    if (buf_append(&c->out, bytes.p, bytes.n) < 0) {
        conn_close(c, "out of memory");
        return;
    }
    Server *s = c->srv;
    /* Output queued by the flush itself, or behind bytes the socket did not take, waits for
     * EV_WRITE. */
    if (!waiting && !c->unsent && !s->flushing) {
        dlist_push(&s->unsent, &c->flush);
        c->unsent = true;
    }
    update_watcher(c);
}

size_t conn_queued(const Conn *c)
{
    return buf_size(&c->out);
}

void conn_close(Conn *c, const char *why)
{
    if (c->closed) {
        return;
    }
    Server *s = c->srv;
    log_debug("client %llu (pid %d, uid %u) closed: %s", (unsigned long long)c->serial, (int)c->pid,
              (unsigned)c->uid, why);
    c->closed = true;
    if (c->waiting) {
        dlist_remove(&c->turn);
        c->waiting = false;
    }
    if (c->unsent) {
        dlist_remove(&c->flush);
        c->unsent = false;
    }
    s->cb->gone(c);
    ev_io_stop(s->loop, &c->io);
    (void)close(c->fd); /* the fd is gone whatever close() says */
    c->fd = -1;
    dlist_remove(&c->link);
    dlist_push(&s->closed, &c->link);
    assert(s->n_conns > 0 && (!c->admitted || s->n_admitted > 0));
    s->n_conns--;
    s->n_admitted -= c->admitted;
}

void conn_finish_if_done(Conn *c)
{
    if (c->eof && !c->closed && !buf_size(&c->out) && !c->srv->cb->owes(c)) {
        conn_close(c, "end of file");
    }
}

static void conn_free(Conn *c)
{
    assert(c->closed && c->fd < 0);
    c->srv->cb->release(c);
    line_reader_free(&c->in);
    buf_free(&c->out);
    free(c);
}

/* Once a slow reader has caught up enough: tell it what it missed. */
static void report_dropped(Conn *c)
{
    if (!c->dropped || buf_size(&c->out) >= c->srv->cfg->ipc.client_buffer / 2) {
        return;
    }
    char ev[64];
    int len = snprintf(ev, sizeof(ev), "{\"event\":\"dropped\",\"count\":%llu}\n",
                       (unsigned long long)c->dropped);
    if (buf_append(&c->out, ev, (size_t)len) == 0) {
        c->dropped = 0;
    }
}

static void on_writable(Conn *c)
{
    while (buf_size(&c->out)) {
        ssize_t n = send(c->fd, c->out.data + c->out.off, buf_size(&c->out), MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR) {
                break;
            }
            conn_close(c, strerror(errno));
            return;
        }
        buf_consume(&c->out, (size_t)n);
        report_dropped(c);
    }
    if (c->srv->cb->drained && buf_size(&c->out) < c->srv->cfg->ipc.client_buffer / 2) {
        c->srv->cb->drained(c); /* may queue more (written at the next readiness) */
        if (c->closed) {
            return;
        }
    }
    if (!buf_size(&c->out)) {
        buf_shrink(&c->out, 16384);
    }
    update_watcher(c);
    conn_finish_if_done(c);
}

/* The peer shut down its side, or the read failed (with errno e). */
static void on_read_end(Conn *c, ssize_t n, int e)
{
    if (line_reader_pending(&c->in)) {
        log_debug("client %llu left in the middle of a request (%zu bytes dropped)",
                  (unsigned long long)c->serial, line_reader_pending(&c->in));
    }
    if (n < 0) {
        conn_close(c, strerror(e));
        return;
    }
    /* Half-closed (e.g. `printf ... | socat`): it may still read the replies it is owed. */
    c->eof = true;
    update_watcher(c);
    conn_finish_if_done(c);
}

/* Up to LINES_PER_TURN of c's requests; then c waits for its next turn if whole lines are
 * left (its socket is not read meanwhile: the peer's writes wait, as back-pressure). */
static void serve(Conn *c)
{
    const ServerCallbacks *cb = c->srv->cb;
    View line;
    int r, n = 0;
    while (!c->closed && n++ < LINES_PER_TURN && (r = line_reader_next(&c->in, &line)) != 0) {
        if (r < 0) {
            cb->overlong(c, c->in.max_line);
        } else if (line.n) { /* blank lines are allowed between requests */
            cb->line(c, line);
        }
    }
    if (c->closed) {
        return;
    }
    bool more = line_reader_ready(&c->in);
    if (more && !c->waiting) {
        Server *s = c->srv;
        dlist_push(&s->waiting, &c->turn);
        c->waiting = true;
        ev_idle_start(s->loop, &s->keep_awake);
    }
    if (!more && !line_reader_pending(&c->in)) {
        buf_shrink(&c->in.in, READ_CHUNK * 2);
    }
    update_watcher(c);
}

/* Once per loop iteration: the next turn of each client that has lines left. */
static void on_turns(struct ev_loop *loop, ev_check *w, int revents)
{
    (void)revents;
    Server *s = container_of(w, Server, turns);
    DList now;
    dlist_init(&now);
    while (!dlist_empty(&s->waiting)) { /* those waiting now; serving may add them back */
        DList *l = s->waiting.next;
        dlist_remove(l);
        dlist_push(&now, l);
    }
    while (!dlist_empty(&now)) {
        Conn *c = container_of(now.next, Conn, turn);
        dlist_remove(&c->turn);
        c->waiting = false;
        serve(c); /* may close others: conn_close takes them out of `now` */
    }
    if (dlist_empty(&s->waiting)) {
        ev_idle_stop(loop, &s->keep_awake);
    }
}

static void on_keep_awake(struct ev_loop *loop, ev_idle *w, int revents)
{
    (void)loop, (void)w, (void)revents; /* its being active is its work */
}

static void on_readable(Conn *c)
{
    uint8_t *space = line_reader_space(&c->in, READ_CHUNK);
    if (!space) {
        conn_close(c, "out of memory");
        return;
    }
    ssize_t n = read(c->fd, space, READ_CHUNK);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
        on_read_end(c, n, errno);
        return;
    }
    if (n < 0) {
        return;
    }
    line_reader_commit(&c->in, (size_t)n);
    serve(c);
}

static void on_conn_io(struct ev_loop *loop, ev_io *w, int revents)
{
    Conn *c = container_of(w, Conn, io);
    (void)loop;
    if (revents & EV_WRITE) {
        on_writable(c);
    }
    if (!c->closed && (revents & EV_READ)) {
        on_readable(c);
    }
}

/* One reply line straight to a peer that is not kept, without waiting. */
static void tell(int fd, enum ipc_error code, const char *msg)
{
    Buf b = {0};
    if (reply_error(&b, NULL, code, msg) == 0) {
        (void)send(fd, b.data, b.len, MSG_NOSIGNAL | MSG_DONTWAIT); /* best effort */
    }
    buf_free(&b);
}

static void reject(Server *s, int fd, enum ipc_error code, const char *msg)
{
    tell(fd, code, msg);
    (void)close(fd);
    s->rejected++;
    log_warning("refused a client: %s", msg);
}

void conn_close_after(Conn *c, View last, const char *why)
{
    if (c->closed) {
        return;
    }
    conn_send(c, last);
    View v = buf_view(&c->out);
    while (v.n) {
        ssize_t n = send(c->fd, v.p, v.n, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n <= 0) {
            break; /* best effort: a full or broken socket loses the rest */
        }
        v = VIEW(v.p + n, v.n - (size_t)n);
    }
    conn_close(c, why);
}

void conn_admit(Conn *c)
{
    assert(!c->admitted);
    if (c->closed) {
        return;
    }
    c->admitted = true;
    c->srv->accepted++;
    c->srv->n_admitted++;
    update_watcher(c);
    log_debug("client %llu connected (pid %d, uid %u)", (unsigned long long)c->serial, (int)c->pid,
              (unsigned)c->uid);
}

void conn_refuse(Conn *c, enum ipc_error code, const char *why)
{
    assert(!c->admitted);
    if (c->closed) {
        return;
    }
    tell(c->fd, code, why);
    c->srv->rejected++;
    log_warning("refused a client: %s", why);
    conn_close(c, why);
}

/* The peer's credentials as the kernel saw them at connect; -1 with the reason in why. */
static int peer_cred(int fd, struct ucred *cred, char *why, size_t n)
{
    *cred = (struct ucred){.pid = 0, .uid = (uid_t)-1, .gid = (gid_t)-1};
    socklen_t len = sizeof(*cred);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, cred, &len) < 0 || len != sizeof(*cred)) {
        snprintf(why, n, "cannot read the peer's credentials: %s",
                 len != sizeof(*cred) ? "short answer" : strerror(errno));
        return -1;
    }
    return 0;
}

/* A new connection for fd, handed to the layer above. */
static void take(Server *s, int fd)
{
    struct ucred cred;
    char why[160];
    if (peer_cred(fd, &cred, why, sizeof(why)) < 0) {
        reject(s, fd, IPC_FORBIDDEN, why);
        return;
    }
    if (s->refusing) {
        reject(s, fd, IPC_SHUTTING_DOWN, "the daemon is shutting down");
        return;
    }
    if (s->n_conns >= s->cfg->ipc.max_clients) {
        snprintf(why, sizeof(why), "too many clients (ipc.max_clients = %u)",
                 s->cfg->ipc.max_clients);
        reject(s, fd, IPC_REFUSED, why);
        return;
    }
    assert(s->cb->conn_size >= sizeof(Conn));
    Conn *c = calloc(1, s->cb->conn_size);
    if (!c) {
        reject(s, fd, IPC_INTERNAL, "out of memory");
        return;
    }
    *c = (Conn){.srv = s,
                .fd = fd,
                .serial = ++s->next_serial,
                .pid = cred.pid,
                .uid = cred.uid,
                .gid = cred.gid};
    line_reader_init(&c->in, s->cfg->ipc.max_line);
    ev_io_init(&c->io, on_conn_io, fd, 0);
    dlist_push(&s->conns, &c->link);
    s->n_conns++;
    enum ipc_error code = IPC_FORBIDDEN;
    int r = s->cb->admit(c, &code, why, sizeof(why));
    if (r < 0) {
        conn_refuse(c, code, why);
    } else if (r == 0) {
        conn_admit(c);
    }
}

static void on_accept(struct ev_loop *loop, ev_io *w, int revents)
{
    Server *s = container_of(w, Server, listen_io);
    (void)loop;
    (void)revents;
    for (int i = 0; i < ACCEPT_BATCH; i++) {
        int fd = accept4(s->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED) {
                log_error("accept on %s: %s", s->cfg->ipc.socket, strerror(errno));
            }
            return;
        }
        take(s, fd);
    }
}

static void free_closed(Server *s)
{
    while (!dlist_empty(&s->closed)) {
        Conn *c = container_of(s->closed.next, Conn, link);
        dlist_remove(&c->link);
        conn_free(c);
    }
}

/* What this iteration queued toward clients goes out now, one write each: a reply or a
 * message leaves in the iteration that made it. What the socket does not take waits for it
 * to be writable. */
void server_flush(Server *s)
{
    DList now;
    dlist_init(&now);
    while (!dlist_empty(&s->unsent)) { /* writing may queue more: that waits a round */
        DList *l = s->unsent.next;
        dlist_remove(l);
        dlist_push(&now, l);
    }
    s->flushing = true;
    size_t before = s->n_conns;
    while (!dlist_empty(&now)) {
        Conn *c = container_of(now.next, Conn, flush);
        dlist_remove(&c->flush);
        c->unsent = false;
        on_writable(c); /* may close others: conn_close takes them out of `now` */
    }
    s->flushing = false;
    if (s->n_conns < before) {
        /* What a close asked of the broker (an UNSUBSCRIBE, the session saved) comes after
         * its prepare watcher ran: one more turn of the loop, without sleeping, sends it. */
        ev_idle_start(s->loop, &s->keep_awake);
    }
}

static void on_prepare(struct ev_loop *loop, ev_prepare *w, int revents)
{
    (void)loop;
    (void)revents;
    Server *s = container_of(w, Server, prepare);
    server_flush(s);
    free_closed(s);
}

void server_refuse_new(Server *s)
{
    s->refusing = true;
}

void server_limits_changed(Server *s)
{
    dlist_for_each_safe(l, next, &s->conns)
    {
        container_of(l, Conn, link)->in.max_line = s->cfg->ipc.max_line;
    }
}

static int mkdir_parents(const char *path)
{
    char tmp[4096];
    snprintf(tmp, sizeof(tmp), "%s", path);
    char *slash = strrchr(tmp, '/');
    if (!slash || slash == tmp) {
        return 0;
    }
    *slash = 0;
    for (char *p = tmp + 1; *p; p++) {
        if (*p == '/') {
            *p = 0;
            if (mkdir(tmp, 0755) < 0 && errno != EEXIST) {
                return -errno;
            }
            *p = '/';
        }
    }
    if (mkdir(tmp, 0755) < 0 && errno != EEXIST) {
        return -errno;
    }
    return 0;
}

/* A socket file left by a crash is replaced; one a live daemon listens on is not. */
static int check_existing(const char *path, const struct sockaddr_un *addr)
{
    struct stat st;
    if (lstat(path, &st) < 0) {
        return errno == ENOENT ? 0 : -errno;
    }
    if (!S_ISSOCK(st.st_mode)) {
        log_error("%s exists and is not a socket: not replacing it", path);
        return -EEXIST;
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return -errno;
    }
    int r = connect(fd, (const struct sockaddr *)addr, sizeof(*addr));
    close(fd);
    if (r == 0) {
        log_error("another mqttbridged is already listening on %s", path);
        return -EADDRINUSE;
    }
    log_info("replacing stale socket %s", path);
    return unlink(path) < 0 && errno != ENOENT ? -errno : 0;
}

static int open_listener(Server *s)
{
    const char *path = s->cfg->ipc.socket;
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof(addr.sun_path)) {
        log_error("socket path too long: %s", path);
        return -ENAMETOOLONG;
    }
    strcpy(addr.sun_path, path);
    int r = mkdir_parents(path);
    if (r < 0) {
        log_error("cannot create the directory of %s: %s", path, strerror(-r));
        return r;
    }
    if ((r = check_existing(path, &addr)) < 0) {
        if (r != -EADDRINUSE && r != -EEXIST) {
            log_error("%s: %s", path, strerror(-r));
        }
        return r;
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return -errno;
    }
    /* Bind with the final mode already in place: no window where others could connect. */
    mode_t old = umask((mode_t)(~s->cfg->ipc.mode & 0777));
    r = bind(fd, (struct sockaddr *)&addr, sizeof(addr));
    umask(old);
    if (r < 0 || listen(fd, SOMAXCONN) < 0) {
        r = -errno;
        log_error("cannot listen on %s: %s", path, strerror(-r));
        close(fd);
        return r;
    }
    if (chmod(path, s->cfg->ipc.mode) < 0) { /* bound with it already: a second say */
        log_warning("chmod %s: %s", path, strerror(errno));
    }
    if (s->cfg->ipc.group && *s->cfg->ipc.group) {
        struct group *g = getgrnam(s->cfg->ipc.group);
        if (!g || chown(path, (uid_t)-1, g->gr_gid) < 0) {
            r = g ? -errno : -ENOENT;
            log_error("cannot give %s to group %s: %s", path, s->cfg->ipc.group,
                      g ? strerror(-r) : "no such group");
            close(fd);
            unlink(path);
            return r;
        }
    }
    s->listen_fd = fd;
    s->socket_path = strdup(path);
    if (!s->socket_path) {
        log_warning("out of memory: %s will be left behind at exit", path);
    }
    return 0;
}

/* The socket systemd passed us (socket activation), made non-blocking. */
static int take_activated(Server *s, int fd)
{
    s->listen_fd = fd;
    s->socket_activated = true;
    int flags = fcntl(s->listen_fd, F_GETFL);
    if (flags < 0 || fcntl(s->listen_fd, F_SETFL, flags | O_NONBLOCK) < 0) {
        int r = -errno;
        log_error("the socket passed by systemd: %s", strerror(-r));
        return r;
    }
    log_info("listening on the socket passed by systemd");
    return 0;
}

int server_start(Server *s, struct ev_loop *loop, const Config *cfg, const ServerCallbacks *cb,
                 void *userdata)
{
    *s = (Server){.loop = loop, .cfg = cfg, .cb = cb, .userdata = userdata, .listen_fd = -1};
    dlist_init(&s->conns);
    dlist_init(&s->closed);
    dlist_init(&s->waiting);
    dlist_init(&s->unsent);
    int fd = -1, r = notify_activated_socket(&fd);
    if (r < 0) {
        return r;
    }
    if (r == 1) {
        r = take_activated(s, fd);
    } else if ((r = open_listener(s)) == 0) {
        log_info("listening on %s", cfg->ipc.socket);
    }
    if (r < 0) {
        return r;
    }
    ev_io_init(&s->listen_io, on_accept, s->listen_fd, EV_READ);
    ev_io_start(loop, &s->listen_io);
    ev_prepare_init(&s->prepare, on_prepare);
    ev_set_priority(&s->prepare, EV_MINPRI); /* last: after the broker's, whose work queues */
    ev_prepare_start(loop, &s->prepare);
    ev_check_init(&s->turns, on_turns);
    ev_check_start(loop, &s->turns);
    ev_idle_init(&s->keep_awake, on_keep_awake);
    return 0;
}

void server_stop(Server *s)
{
    ev_io_stop(s->loop, &s->listen_io);
    while (!dlist_empty(&s->conns)) {
        Conn *c = container_of(s->conns.next, Conn, link);
        /* Give each peer what is already queued for it, without waiting. */
        if (buf_size(&c->out)) {
            (void)send(c->fd, c->out.data + c->out.off, buf_size(&c->out),
                       MSG_NOSIGNAL | MSG_DONTWAIT); /* best effort */
        }
        conn_close(c, "daemon stopping");
    }
    free_closed(s);
    ev_prepare_stop(s->loop, &s->prepare);
    ev_check_stop(s->loop, &s->turns);
    ev_idle_stop(s->loop, &s->keep_awake);
    if (s->listen_fd >= 0) {
        (void)close(s->listen_fd);
        s->listen_fd = -1;
    }
    if (s->socket_path) {
        (void)unlink(s->socket_path); /* gone already is fine */
        free(s->socket_path);
        s->socket_path = NULL;
    }
}

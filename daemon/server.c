/* SPDX-License-Identifier: MIT */
/*
 * The local socket server: accepting clients, reading request lines, buffered writes.
 *
 * Limits: at most ipc.max_clients clients (the next one is told why and closed); request
 * lines up to ipc.max_line (longer ones get too_large and are skipped); and at most
 * ipc.client_buffer bytes queued toward one client. Past that, message events for it are
 * dropped and counted (it gets a "dropped" event once it has caught up), and its requests
 * are not read until it has, so its replies cannot pile up either.
 *
 * A client is never freed inside its own callback: client_close() closes the socket at once
 * and parks the struct on d->closed, which the ev_prepare watcher empties.
 */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include "daemon.h"
#include "log.h"

#define READ_CHUNK 65536

static void update_watcher(Client *c)
{
    Daemon *d = c->d;
    bool backlog = buf_size(&c->out) > d->cfg.ipc.client_buffer;
    int events = (backlog || c->eof ? 0 : EV_READ) | (buf_size(&c->out) ? EV_WRITE : 0);
    if (c->io.events != events || !ev_is_active(&c->io)) {
        ev_io_stop(d->loop, &c->io);
        if (events) {
            ev_io_set(&c->io, c->fd, events);
            ev_io_start(d->loop, &c->io);
        }
    }
}

void client_send(Client *c, View bytes)
{
    if (c->closed) {
        return;
    }
    if (buf_append(&c->out, bytes.p, bytes.n) < 0) {
        client_close(c, "out of memory");
        return;
    }
    update_watcher(c);
}

void client_close(Client *c, const char *why)
{
    if (c->closed) {
        return;
    }
    Daemon *d = c->d;
    log_debug("client %llu (pid %d, uid %u) closed: %s", (unsigned long long)c->serial, (int)c->pid,
              (unsigned)c->uid, why);
    c->closed = true;
    d->server_cb->gone(c);
    ev_io_stop(d->loop, &c->io);
    close(c->fd);
    c->fd = -1;
    dlist_remove(&c->link);
    dlist_push(&d->closed, &c->link);
    d->n_clients--;
}

void client_finish_if_done(Client *c)
{
    /* Still owed: a reply, or the retained messages of a new subscription (barrier). */
    if (c->eof && !c->closed && !buf_size(&c->out) && dlist_empty(&c->waiters)) {
        client_close(c, "end of file");
    }
}

static void client_free(Client *c)
{
    c->d->server_cb->release(c);
    line_reader_free(&c->in);
    buf_free(&c->out);
    free(c);
}

static void on_client_writable(Client *c)
{
    Daemon *d = c->d;
    while (buf_size(&c->out)) {
        ssize_t n = send(c->fd, c->out.data + c->out.off, buf_size(&c->out), MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR) {
                break;
            }
            client_close(c, strerror(errno));
            return;
        }
        buf_consume(&c->out, (size_t)n);
        /* Caught up enough: tell it what it missed. */
        if (c->dropped && buf_size(&c->out) < d->cfg.ipc.client_buffer / 2) {
            char ev[64];
            int len = snprintf(ev, sizeof(ev), "{\"event\":\"dropped\",\"count\":%llu}\n",
                               (unsigned long long)c->dropped);
            c->dropped = 0;
            buf_append(&c->out, ev, (size_t)len);
        }
    }
    if (!buf_size(&c->out)) {
        buf_shrink(&c->out, 16384);
    }
    update_watcher(c);
    client_finish_if_done(c);
}

static void on_client_readable(Client *c)
{
    Daemon *d = c->d;
    uint8_t *space = line_reader_space(&c->in, READ_CHUNK);
    if (!space) {
        client_close(c, "out of memory");
        return;
    }
    ssize_t n = read(c->fd, space, READ_CHUNK);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
        if (line_reader_pending(&c->in)) {
            log_debug("client %llu left in the middle of a request (%zu bytes dropped)",
                      (unsigned long long)c->serial, line_reader_pending(&c->in));
        }
        if (n < 0) {
            client_close(c, strerror(errno));
            return;
        }
        /* Half-closed (e.g. `printf ... | socat`): it may still read the replies it is owed. */
        c->eof = true;
        update_watcher(c);
        client_finish_if_done(c);
        return;
    }
    if (n < 0) {
        return;
    }
    line_reader_commit(&c->in, (size_t)n);
    View line;
    int r;
    while (!c->closed && (r = line_reader_next(&c->in, &line)) != 0) {
        if (r < 0) {
            d->server_cb->overlong(c, d->cfg.ipc.max_line);
            continue;
        }
        if (line.n == 0) {
            continue; /* blank lines are allowed between requests */
        }
        d->server_cb->line(c, line);
    }
    if (!c->closed && !line_reader_pending(&c->in)) {
        buf_shrink(&c->in.in, READ_CHUNK * 2);
    }
}

static void on_client_io(struct ev_loop *loop, ev_io *w, int revents)
{
    Client *c = container_of(w, Client, io);
    (void)loop;
    if (revents & EV_WRITE) {
        on_client_writable(c);
    }
    if (!c->closed && (revents & EV_READ)) {
        on_client_readable(c);
    }
}

static void reject(Daemon *d, int fd, enum ipc_error code, const char *msg)
{
    Buf b = {0};
    if (reply_error(&b, NULL, code, msg) == 0) {
        ssize_t w = send(fd, b.data, b.len, MSG_NOSIGNAL | MSG_DONTWAIT);
        (void)w;
    }
    buf_free(&b);
    close(fd);
    d->stats.clients_rejected++;
    log_warning("refused a client: %s", msg);
}

static void on_accept(struct ev_loop *loop, ev_io *w, int revents)
{
    Daemon *d = container_of(w, Daemon, listen_io);
    (void)loop;
    (void)revents;
    for (int i = 0; i < 64; i++) {
        int fd = accept4(d->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED) {
                log_error("accept on %s: %s", d->cfg.ipc.socket, strerror(errno));
            }
            return;
        }
        struct ucred cred = {.pid = 0, .uid = (uid_t)-1, .gid = (gid_t)-1};
        socklen_t len = sizeof(cred);
        char why[160];
        if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0 || len != sizeof(cred)) {
            snprintf(why, sizeof(why), "cannot read the peer's credentials: %s",
                     len != sizeof(cred) ? "short answer" : strerror(errno));
            reject(d, fd, IPC_FORBIDDEN, why);
            continue;
        }
        if (d->stopping) {
            reject(d, fd, IPC_SHUTTING_DOWN, "the daemon is shutting down");
            continue;
        }
        if (d->n_clients >= d->cfg.ipc.max_clients) {
            snprintf(why, sizeof(why), "too many clients (ipc.max_clients = %u)",
                     d->cfg.ipc.max_clients);
            reject(d, fd, IPC_REFUSED, why);
            continue;
        }
        Client *c = calloc(1, sizeof(*c));
        if (!c) {
            close(fd);
            continue;
        }
        *c = (Client){.d = d, .fd = fd, .serial = ++d->next_serial};
        dlist_init(&c->waiters);
        enum ipc_error code = IPC_FORBIDDEN;
        if (d->server_cb->admit(c, &cred, &code, why, sizeof(why)) < 0) {
            d->server_cb->release(c);
            free(c);
            reject(d, fd, code, why);
            continue;
        }
        line_reader_init(&c->in, d->cfg.ipc.max_line);
        ev_io_init(&c->io, on_client_io, fd, EV_READ);
        ev_io_start(d->loop, &c->io);
        dlist_push(&d->clients, &c->link);
        d->n_clients++;
        d->stats.clients_accepted++;
        log_debug("client %llu connected (pid %d, uid %u)", (unsigned long long)c->serial,
                  (int)c->pid, (unsigned)c->uid);
    }
}

static void on_prepare(struct ev_loop *loop, ev_prepare *w, int revents)
{
    Daemon *d = container_of(w, Daemon, prepare);
    (void)loop;
    (void)revents;
    while (!dlist_empty(&d->closed)) {
        Client *c = container_of(d->closed.next, Client, link);
        dlist_remove(&c->link);
        client_free(c);
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

static int open_listener(Daemon *d)
{
    const char *path = d->cfg.ipc.socket;
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
    mode_t old = umask((mode_t)(~d->cfg.ipc.mode & 0777));
    r = bind(fd, (struct sockaddr *)&addr, sizeof(addr));
    umask(old);
    if (r < 0 || listen(fd, SOMAXCONN) < 0) {
        r = -errno;
        log_error("cannot listen on %s: %s", path, strerror(-r));
        close(fd);
        return r;
    }
    chmod(path, d->cfg.ipc.mode);
    if (d->cfg.ipc.group && *d->cfg.ipc.group) {
        struct group *g = getgrnam(d->cfg.ipc.group);
        if (!g || chown(path, (uid_t)-1, g->gr_gid) < 0) {
            r = g ? -errno : -ENOENT;
            log_error("cannot give %s to group %s: %s", path, d->cfg.ipc.group,
                      g ? strerror(-r) : "no such group");
            close(fd);
            unlink(path);
            return r;
        }
    }
    d->listen_fd = fd;
    d->socket_path = strdup(path);
    return 0;
}

int server_start(Daemon *d, const ServerCallbacks *cb)
{
    d->server_cb = cb;
    dlist_init(&d->clients);
    dlist_init(&d->closed);
    int n = sd_listen_fds(1);
    if (n > 1) {
        log_error("socket activation passed %d sockets; expected one", n);
        return -EINVAL;
    }
    if (n == 1 && sd_is_socket_unix(SD_LISTEN_FDS_START, SOCK_STREAM, 1, NULL, 0) > 0) {
        d->listen_fd = SD_LISTEN_FDS_START;
        d->socket_activated = true;
        int flags = fcntl(d->listen_fd, F_GETFL);
        fcntl(d->listen_fd, F_SETFL, flags | O_NONBLOCK);
        log_info("listening on the socket passed by systemd");
    } else {
        int r = open_listener(d);
        if (r < 0) {
            return r;
        }
        log_info("listening on %s", d->cfg.ipc.socket);
    }
    ev_io_init(&d->listen_io, on_accept, d->listen_fd, EV_READ);
    ev_io_start(d->loop, &d->listen_io);
    ev_prepare_init(&d->prepare, on_prepare);
    ev_prepare_start(d->loop, &d->prepare);
    return 0;
}

void server_stop(Daemon *d)
{
    ev_io_stop(d->loop, &d->listen_io);
    while (!dlist_empty(&d->clients)) {
        Client *c = container_of(d->clients.next, Client, link);
        /* Give each client what is already queued for it, without waiting. */
        if (buf_size(&c->out)) {
            ssize_t w = send(c->fd, c->out.data + c->out.off, buf_size(&c->out),
                             MSG_NOSIGNAL | MSG_DONTWAIT);
            (void)w;
        }
        client_close(c, "daemon stopping");
    }
    while (!dlist_empty(&d->closed)) {
        Client *c = container_of(d->closed.next, Client, link);
        dlist_remove(&c->link);
        client_free(c);
    }
    ev_prepare_stop(d->loop, &d->prepare);
    if (d->listen_fd >= 0) {
        close(d->listen_fd);
        d->listen_fd = -1;
    }
    if (d->socket_path) {
        unlink(d->socket_path);
        free(d->socket_path);
        d->socket_path = NULL;
    }
}

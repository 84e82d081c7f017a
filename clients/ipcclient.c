/* SPDX-License-Identifier: MIT */
/* Blocking IPC client: see ipcclient.h. */
#include "ipcclient.h"

#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "ipc/protocol.h"

#define MAX_LINE (64u << 20)

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int ipc_connect(IpcClient *c, const char *path)
{
    *c = (IpcClient){.fd = -1, .next_id = 1};
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof(addr.sun_path)) {
        return -ENAMETOOLONG;
    }
    strcpy(addr.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return -errno;
    }
    if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    c->fd = fd;
    line_reader_init(&c->in, MAX_LINE);
    c->pending = json_array();
    return c->pending ? 0 : -ENOMEM;
}

void ipc_close(IpcClient *c)
{
    if (c->fd >= 0) {
        close(c->fd);
    }
    c->fd = -1;
    line_reader_free(&c->in);
    buf_free(&c->out);
    json_decref(c->pending);
    c->pending = NULL;
}

json_int_t ipc_queue(IpcClient *c, json_t *req)
{
    json_int_t id = c->next_id++;
    json_object_set_new(req, "id", json_integer(id));
    write_json_line(&c->out, req);
    return id;
}

/* Wait for the socket; returns poll revents, 0 on timeout. */
static int wait_fd(IpcClient *c, short events, int64_t deadline)
{
    int left = deadline < 0 ? -1 : (int)(deadline - mono_ms());
    if (deadline >= 0 && left < 0) {
        left = 0;
    }
    struct pollfd p = {.fd = c->fd, .events = events};
    int r = poll(&p, 1, left);
    if (r < 0) {
        return -errno; /* -EINTR included: the caller decides */
    }
    return r ? p.revents : 0;
}

static int write_some(IpcClient *c)
{
    ssize_t n =
        send(c->fd, c->out.data + c->out.off, buf_size(&c->out), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0) {
        return errno == EAGAIN ? 0 : -errno;
    }
    buf_consume(&c->out, (size_t)n);
    return 0;
}

int ipc_flush(IpcClient *c, int timeout_ms)
{
    int64_t deadline = timeout_ms < 0 ? -1 : mono_ms() + timeout_ms;
    while (buf_size(&c->out)) {
        int ev = wait_fd(c, POLLOUT, deadline);
        if (ev < 0) {
            return ev;
        }
        if (ev == 0) {
            return -ETIMEDOUT;
        }
        int r = write_some(c);
        if (r < 0) {
            return r;
        }
    }
    return 0;
}

int ipc_read_pending(IpcClient *c, json_t **ret)
{
    if (json_array_size(c->pending) == 0) {
        return 0;
    }
    *ret = json_incref(json_array_get(c->pending, 0));
    json_array_remove(c->pending, 0);
    return 1;
}

/* The next non-empty line from the socket. */
static int next_line(IpcClient *c, View *ret, int64_t deadline)
{
    for (;;) {
        View line;
        int r = line_reader_next(&c->in, &line);
        if (r < 0) {
            return -E2BIG;
        }
        if (r > 0) {
            if (line.n == 0) {
                continue;
            }
            *ret = line;
            return 1;
        }
        int ev = wait_fd(c, (short)(POLLIN | (buf_size(&c->out) ? POLLOUT : 0)), deadline);
        if (ev <= 0) {
            return ev;
        }
        if ((ev & POLLOUT) && (r = write_some(c)) < 0) {
            return r;
        }
        if (ev & (POLLIN | POLLHUP | POLLERR)) {
            uint8_t *space = line_reader_space(&c->in, 65536);
            if (!space) {
                return -ENOMEM;
            }
            ssize_t n = read(c->fd, space, 65536);
            if (n < 0 && errno != EINTR && errno != EAGAIN) {
                return -errno;
            }
            if (n == 0) {
                return -EPIPE;
            }
            if (n > 0) {
                line_reader_commit(&c->in, (size_t)n);
            }
        }
    }
}

/* The next line from the socket, parsed. */
static int read_line(IpcClient *c, json_t **ret, int64_t deadline)
{
    View line;
    int r = next_line(c, &line, deadline);
    if (r <= 0) {
        return r;
    }
    json_t *j = json_loadb((const char *)line.p, line.n, JSON_ALLOW_NUL, NULL);
    if (!j) {
        return -EBADMSG;
    }
    *ret = j;
    return 1;
}

int ipc_read_raw(IpcClient *c, View *ret, int timeout_ms)
{
    return next_line(c, ret, timeout_ms < 0 ? -1 : mono_ms() + timeout_ms);
}

int ipc_read(IpcClient *c, json_t **ret, int timeout_ms)
{
    if (ipc_read_pending(c, ret)) {
        return 1;
    }
    return read_line(c, ret, timeout_ms < 0 ? -1 : mono_ms() + timeout_ms);
}

int ipc_call(IpcClient *c, json_t *req, json_t **ret_reply, int timeout_ms)
{
    int64_t deadline = timeout_ms < 0 ? -1 : mono_ms() + timeout_ms;
    json_int_t id = ipc_queue(c, req);
    for (;;) {
        json_t *m;
        int r = read_line(c, &m, deadline);
        if (r <= 0) {
            return r == 0 ? -ETIMEDOUT : r;
        }
        json_t *mid = json_object_get(m, "id");
        if (!json_object_get(m, "event") && json_is_integer(mid) && json_integer_value(mid) == id) {
            *ret_reply = m;
            return 0;
        }
        json_array_append_new(c->pending, m);
    }
}

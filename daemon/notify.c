/* SPDX-License-Identifier: MIT */
/* sd_notify integration: see notify.h. */
#include "notify.h"

#include <dlfcn.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include "log.h"

static ev_timer watchdog;
static char last_status[256];

/* libsystemd, loaded only when the service manager speaks to us: its mapping and what it
 * pulls in (libgcrypt, liblzma, libzstd, liblz4, libcap) are a megabyte of RSS that a daemon
 * started by hand, in a container or under another supervisor never uses. */
static struct {
    bool tried, loaded;
    __typeof__(sd_notify) *notify;
    __typeof__(sd_watchdog_enabled) *watchdog_enabled;
    __typeof__(sd_listen_fds) *listen_fds;
    __typeof__(sd_is_socket_unix) *is_socket_unix;
} sd;

/* Sockets passed to this process: LISTEN_FDS counts only with LISTEN_PID naming us, as
 * sd_listen_fds(3) has it (a pair inherited from a parent that was activated is not ours). */
static bool sockets_passed(void)
{
    const char *pid = getenv("LISTEN_PID");
    return getenv("LISTEN_FDS") && pid && strtoll(pid, NULL, 10) == (long long)getpid();
}

/* The variables by which libsystemd's functions know they run under systemd: without any of
 * them each would return 0, as the daemon's own stand-ins do. */
static bool under_systemd(void)
{
    return getenv("NOTIFY_SOCKET") || sockets_passed() || getenv("WATCHDOG_USEC");
}

static bool load(void)
{
    if (sd.tried) {
        return sd.loaded;
    }
    sd.tried = true;
    if (!under_systemd()) {
        return false;
    }
    void *h = dlopen("libsystemd.so.0", RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        log_error("started by systemd, but libsystemd cannot be loaded: %s", dlerror());
        return false;
    }
    sd.notify = (__typeof__(sd.notify))dlsym(h, "sd_notify");
    sd.watchdog_enabled = (__typeof__(sd.watchdog_enabled))dlsym(h, "sd_watchdog_enabled");
    sd.listen_fds = (__typeof__(sd.listen_fds))dlsym(h, "sd_listen_fds");
    sd.is_socket_unix = (__typeof__(sd.is_socket_unix))dlsym(h, "sd_is_socket_unix");
    if (!sd.notify || !sd.watchdog_enabled || !sd.listen_fds || !sd.is_socket_unix) {
        log_error("libsystemd.so.0 lacks sd_notify, sd_watchdog_enabled, sd_listen_fds or "
                  "sd_is_socket_unix");
        (void)dlclose(h); /* nothing of it is used: its error would change nothing */
        return false;
    }
    sd.loaded = true;
    return true;
}

static void say(const char *state)
{
    if (load()) {
        (void)sd.notify(0, state); /* no manager listening is not an error of ours */
    }
}

int notify_activated_socket(int *fd)
{
    if (!sockets_passed()) {
        return 0;
    }
    if (!load()) {
        return -ENOSYS; /* said by load() */
    }
    int n = sd.listen_fds(1);
    if (n <= 0) {
        return n;
    }
    if (n > 1) {
        log_error("socket activation passed %d sockets; expected one", n);
        return -EINVAL;
    }
    if (sd.is_socket_unix(SD_LISTEN_FDS_START, SOCK_STREAM, 1, NULL, 0) <= 0) {
        log_warning("the socket passed by systemd is not a listening Unix stream socket: left "
                    "alone, the configured one is used");
        return 0;
    }
    *fd = SD_LISTEN_FDS_START;
    return 1;
}

static void on_watchdog(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)w;
    (void)revents;
    say("WATCHDOG=1");
}

void notify_start(struct ev_loop *loop)
{
    uint64_t usec = 0;
    if (load() && sd.watchdog_enabled(0, &usec) > 0 && usec > 0) {
        /* Twice per period, as sd_watchdog_enabled(3) advises. */
        double every = (double)usec / 2e6;
        ev_timer_init(&watchdog, on_watchdog, every, every);
        ev_timer_start(loop, &watchdog);
        log_debug("systemd watchdog: pinging every %.3f s", every);
    }
}

void notify_stop(struct ev_loop *loop)
{
    ev_timer_stop(loop, &watchdog);
}

void notify_ready(void)
{
    say("READY=1");
}

void notify_reloading(void)
{
    say("RELOADING=1");
}

void notify_stopping(void)
{
    say("STOPPING=1");
}

void notify_status(const char *fmt, ...)
{
    char text[sizeof(last_status)];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    if (strcmp(text, last_status) == 0) {
        return;
    }
    memcpy(last_status, text, sizeof(text));
    char line[sizeof("STATUS=") + sizeof(text)];
    snprintf(line, sizeof(line), "STATUS=%s", text);
    say(line);
}

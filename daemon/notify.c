/* SPDX-License-Identifier: MIT */
/* sd_notify integration: see notify.h. */
#include "notify.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <systemd/sd-daemon.h>

#include "log.h"

static ev_timer watchdog;
static char last_status[256];

static void on_watchdog(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)w;
    (void)revents;
    sd_notify(0, "WATCHDOG=1");
}

void notify_start(struct ev_loop *loop)
{
    uint64_t usec = 0;
    if (sd_watchdog_enabled(0, &usec) > 0 && usec > 0) {
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
    sd_notify(0, "READY=1");
}

void notify_reloading(void)
{
    sd_notify(0, "RELOADING=1");
}

void notify_stopping(void)
{
    sd_notify(0, "STOPPING=1");
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
    sd_notifyf(0, "STATUS=%s", text);
}

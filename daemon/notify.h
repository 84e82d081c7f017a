/* SPDX-License-Identifier: MIT */
/*
 * The systemd service protocol (sd_notify): READY/RELOADING/STOPPING, a STATUS= line kept
 * current, and WATCHDOG=1 pings sent from the event loop itself, so a stuck loop is noticed
 * and restarted; and the listening socket of socket activation. libsystemd is loaded only when
 * the environment says systemd started us: otherwise all of this costs nothing, not even the
 * library's pages.
 */
#pragma once

#include <ev.h>

void notify_start(struct ev_loop *loop);
void notify_stop(struct ev_loop *loop);
void notify_ready(void);
void notify_reloading(void);
void notify_stopping(void);
/* STATUS=...; sent only when the text changes. */
void notify_status(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* The listening Unix stream socket systemd passed (LISTEN_FDS): 1 and *fd set, 0 when none was
 * passed, or a negative errno (said in the log) when one was meant but cannot be taken. */
int notify_activated_socket(int *fd);

/* SPDX-License-Identifier: MIT */
/*
 * Statistics and metrics: the `stats` object, and the [metrics] textfile (see metrics.c).
 */
#pragma once

#include "daemon.h"

/* The object of the `stats` reply (caller owns it), NULL when out of memory. */
json_t *metrics_stats(Daemon *d);

/* [metrics] textfile: start writing it every `interval` seconds (nothing without one). */
void metrics_start(Daemon *d);
/* The configuration was reloaded: the new textfile and interval apply. */
void metrics_reload(Daemon *d);
/* Stop, waiting for a write in flight. */
void metrics_stop(Daemon *d);

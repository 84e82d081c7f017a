/* SPDX-License-Identifier: MIT */
/*
 * The daemon's statistics (the `stats` reply, docs/protocol.md) as text for Prometheus: every
 * counter and gauge as mqttbridge_<name> with HELP and TYPE lines, counters named ..._total,
 * the publish and ping round-trip histograms in seconds, and OpenMetrics' closing # EOF. The
 * HELP and TYPE lines name a counter with its _total, as the Prometheus text format that
 * node_exporter's textfile collector reads (and promtool checks) wants them. Pure: used by
 * `mqttctl stats --openmetrics` and by the daemon's [metrics] textfile.
 */
#pragma once

#include <jansson.h>

#include "buf.h"

/* Append the exposition of `stats` (the object of a stats reply) to `out`. -ENOMEM. */
int openmetrics_write(Buf *out, const json_t *stats);

/* SPDX-License-Identifier: MIT */
/*
 * Named local sessions (../shared/spec/sessions.md): a program that restarts misses nothing.
 *
 * A session holds subscriptions in its own right (a SubHolder of its own, whose router target
 * is of kind TARGET_SESSION), so they and the broker subscriptions behind them stay while its
 * program is away. QoS 1/2 messages for it are kept, numbered (`seq`), until the program
 * acknowledges them (`ack`, cumulative); on resume the unacknowledged ones go again, in order,
 * marked `redelivered`, then those that came meanwhile. QoS 0 messages go only to a connected
 * program. Bounds ([sessions]) drop the oldest kept messages, counted and announced.
 *
 * A session belongs to the uid that made it. A second connection of that uid naming it takes
 * it over; the first is told and closed. The session outlives its last connection by its
 * expiry, then ends with its subscriptions. Kept in memory: a daemon restart ends every
 * session (the spool does not hold them yet).
 */
#pragma once

#include "daemon.h"

void sessions_init(Daemon *d);
void sessions_free(Daemon *d);

/* The ops (after parsing). session: before any subscription of the connection. */
void sessions_op_session(Client *c, Request *r);
void sessions_op_ack(Client *c, Request *r);
void sessions_op_end(Client *c, Request *r);
void sessions_op_list(Client *c, Request *r);

/* The configuration was reloaded: lowered bounds apply to what sessions keep now. */
void sessions_reload(Daemon *d);
/* c's output has room again: the kept messages held back go (ServerCallbacks.drained). */
void sessions_drained(Client *c);
/* Whether a session can take a message now (its program is connected), for shared groups:
 * a turn goes to a member that is there. */
bool sessions_ready(const RouterTarget *t);
/* The broker refused `filter` when it was restored: sessions that are away forget it (a
 * connected one hears it as any client, from subs_lost). */
void sessions_lost(Daemon *d, View filter);

/* c is closing: its session (if any) goes on without it. Before subs_client_gone. */
void sessions_client_gone(Client *c);

/* A message routed to a session's holding (bridge.c): kept (QoS 1/2) and sent when its
 * program is connected. */
void sessions_deliver(Daemon *d, RouterTarget *t, const MqttPublish *m, const MqttProps *props);

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
 * expiry, then ends with its subscriptions.
 *
 * With [queue] spool_dir, the spool holds them too: a session is written whole when it starts,
 * when its subscriptions, expiry or connection change; each kept message before the broker is
 * acknowledged; each acknowledgement; and a DONE for every message acknowledged or dropped
 * and for the session when it ends. At the next start they come back (sessions_recovered...)
 * before the broker link is up, their expiry counted from when their program left. Without a
 * spool they live in memory only.
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

/* Stopping, before the spool closes: changes not written yet are written now. */
void sessions_flush(Daemon *d);
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
/* Whether c may subscribe to `filter`: in a session, its filters together (with 8 bytes
 * each) are at most 1 MiB, since the spool writes them whole. Answered when not. */
bool sessions_may_subscribe(Client *c, json_t *id, View filter);
/* c subscribed or unsubscribed: its session (if any) is written to the spool again. */
void sessions_client_subscribed(Client *c);

/* Recovery, from spool_open's callbacks (main.c): a session, then its kept messages (false:
 * no session to keep it for, the caller forgets it with spool_done), then, once the spool is
 * open, sessions_recovery_done (bounds, expiry timers). */
void sessions_recovered(Daemon *d, const SpoolSession *m);
bool sessions_recovered_message(Daemon *d, const SpoolMessage *m);
void sessions_recovery_done(Daemon *d);

/* A message routed to a session's holding (bridge.c): kept (QoS 1/2) and sent when its
 * program is connected. */
void sessions_deliver(Daemon *d, RouterTarget *t, const MqttPublish *m, const MqttProps *props);

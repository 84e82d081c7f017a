/* SPDX-License-Identifier: MIT */
/*
 * From the broker session to local clients: messages to every client whose filters match,
 * connection and ping events, completions to waiting requests, progress to the spool.
 */
#pragma once

#include "daemon.h"

/* The session's event callback (broker_init's userdata is the Daemon). */
void bridge_on_event(void *userdata, const SessionEvent *ev);
/* Broker.on_input_done: the messages a read brought go to local clients now, before the
 * acknowledgements the session wrote for them go to the broker. */
void bridge_input_done(void *userdata);

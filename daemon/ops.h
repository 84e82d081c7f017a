/* SPDX-License-Identifier: MIT */
/*
 * The request layer: one function per op of docs/protocol.md, and the callbacks through which
 * the connection layer (server.c) hands it peers and their lines.
 */
#pragma once

#include "daemon.h"

/* For server_start: a Client per connection, admitted by access.c, its lines parsed and
 * dispatched here. */
extern const ServerCallbacks ops_server_callbacks;
/* At the end: what the request layer keeps from line to line. */
void ops_free(void);

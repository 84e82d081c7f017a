/* SPDX-License-Identifier: MIT */
/*
 * The request op (MQTT 5 request/response, standard section 4.10): the daemon publishes a
 * local program's request with a Response Topic and a Correlation Data of its own, and
 * answers the request with the message that comes back, or `timeout`.
 *
 * One subscription serves every request: the response topic is `[rpc] response_prefix`, else
 * the Response Information of the broker's CONNACK, else mqttbridge/<client id>/responses,
 * chosen at the first request and kept until the daemon stops. The daemon holds it through
 * the router like a local subscriber (Daemon.rpc.target, marked internal), so it shares the
 * broker subscription with local clients of the same filter. Its SUBSCRIBE goes out before
 * the request's PUBLISH on the same link (the session sends subscriptions before queued
 * messages), so the broker has it before any responder can answer.
 *
 * Each request waits (waiters.h) under its correlation data, which is unique in this run; a
 * response naming no waiting request is counted (responses_unmatched) and dropped here (a
 * local subscriber of the topic still gets it).
 */
#pragma once

#include "daemon.h"

void rpc_init(Daemon *d);
void rpc_free(Daemon *d);
/* The request op, after the checks publish makes (ops.c): 0 when answered or waiting, else
 * -errno as session_publish returns them, for the caller to answer. */
int rpc_request(Client *c, Request *r, int64_t timeout_ms);
/* A message routed to the daemon's own holding: the response to a waiting request, or not. */
void rpc_response(Daemon *d, const MqttPublish *m, const MqttProps *props);
/* The broker refused the response subscription when it was restored: made again at the next
 * request. */
void rpc_lost(Daemon *d, View filter);
/* The broker's answer to the response subscription (its SUBSCRIBE names Daemon.rpc as the
 * request): on a refusal every waiting request fails with the reason, and the next request
 * asks again. */
void rpc_subscribed(Daemon *d, int result, uint8_t reason, View reason_string);

#define RPC_CORRELATION_LEN 32 /* hex digits of a request's correlation data */

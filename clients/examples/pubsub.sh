#!/bin/sh
# SPDX-License-Identifier: MIT
# Subscribe and publish through mqttbridged with nothing but socat.
# Usage: pubsub.sh [SOCKET]   (default: $MQTTBRIDGE_SOCKET or /run/mqttbridge/mqttbridge.sock)
# Prints the daemon's answers: a granted subscription, our own message coming back, the
# publish confirmation.
set -eu
sock=${1:-${MQTTBRIDGE_SOCKET:-/run/mqttbridge/mqttbridge.sock}}
topic="examples/shell/$$"

{
  printf '{"id":1,"op":"subscribe","filter":"%s","qos":1}\n' "$topic"
  printf '{"id":2,"op":"publish","topic":"%s","payload":"hello from sh","qos":1}\n' "$topic"
  sleep 1   # keep the connection open long enough to see the message event
} | socat - "UNIX-CONNECT:$sock"

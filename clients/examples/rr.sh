#!/bin/sh
# SPDX-License-Identifier: MIT
# MQTT 5 request/response from the shell: a responder (rr.py serve, next to this script) and
# two requests, one with mqttctl rr and one as a raw JSON line through socat.
# Usage: rr.sh [SOCKET]   (default: $MQTTBRIDGE_SOCKET or /run/mqttbridge/mqttbridge.sock)
# Prints the two responses: HELLO FROM MQTTCTL, then the daemon's JSON reply for the second.
set -eu
MQTTBRIDGE_SOCKET=${1:-${MQTTBRIDGE_SOCKET:-/run/mqttbridge/mqttbridge.sock}}
export MQTTBRIDGE_SOCKET
here=$(dirname "$0")
topic="examples/rr/$$"

# The responder answers two requests, then exits; wait until it is subscribed.
python3 "$here/rr.py" serve "$topic" 2 > "${TMPDIR:-/tmp}/rr.$$" &
responder=$!
trap 'kill $responder 2>/dev/null; rm -f "${TMPDIR:-/tmp}/rr.$$"' EXIT
until grep -q serving "${TMPDIR:-/tmp}/rr.$$" 2>/dev/null; do sleep 0.05; done

${MQTTCTL:-mqttctl} rr -t "$topic" -m "hello from mqttctl" -q 1 -W 5
printf '{"id":1,"op":"request","topic":"%s","payload":"hello from socat","qos":1}\n' "$topic" |
  socat -t 5 - "UNIX-CONNECT:$MQTTBRIDGE_SOCKET"
wait $responder
trap - EXIT
rm -f "${TMPDIR:-/tmp}/rr.$$"

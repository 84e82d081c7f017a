#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""MQTT 5 request/response through mqttbridged, with only the Python standard library.

Usage: rr.py serve TOPIC [COUNT]   answer requests on TOPIC (their payload upper-cased);
                                   after COUNT of them exit (default: run until killed)
       rr.py ask TOPIC MESSAGE     send one request and print the response's payload

The socket is $MQTTBRIDGE_SOCKET, else /run/mqttbridge/mqttbridge.sock. The daemon's broker
link must speak MQTT 5 ([broker] protocol = 5 or auto).
"""
import json
import os
import socket
import sys


def connect():
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(os.environ.get("MQTTBRIDGE_SOCKET", "/run/mqttbridge/mqttbridge.sock"))
    return sock, sock.makefile("rb")


def send(sock, **request):
    sock.sendall((json.dumps(request) + "\n").encode())


def serve(topic, count):
    """A responder: each request names where to answer (response_topic) and how to say which
    request it answers (correlation data), which it copies as it came."""
    sock, lines = connect()
    send(sock, id="sub", op="subscribe", filter=topic, qos=1)
    served = 0
    for line in lines:
        msg = json.loads(line)
        if msg.get("id") == "sub":
            if not msg["ok"]:
                sys.exit(f"subscribe: {msg['error']['message']}")
            print(f"serving {topic}", flush=True)
        elif msg.get("event") == "message" and "response_topic" in msg:
            corr = {k: msg[k] for k in ("correlation_data", "correlation_data_b64") if k in msg}
            send(sock, op="publish", topic=msg["response_topic"], qos=1,
                 payload=msg.get("payload", "").upper(), **corr)
            served += 1
            if count and served == count:
                return 0
    return 1


def ask(topic, message):
    sock, lines = connect()
    send(sock, id=1, op="request", topic=topic, payload=message, qos=1, timeout_ms=5000)
    for line in lines:
        reply = json.loads(line)
        if reply.get("id") == 1:
            if not reply["ok"]:
                sys.exit(f"request: {reply['error']['code']}: {reply['error']['message']}")
            print(reply["response"].get("payload"))
            return 0
    return 1


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "serve":
        sys.exit(serve(sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 0))
    if len(sys.argv) == 4 and sys.argv[1] == "ask":
        sys.exit(ask(sys.argv[2], sys.argv[3]))
    sys.exit(__doc__)

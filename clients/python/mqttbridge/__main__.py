# SPDX-License-Identifier: MIT
"""A tiny command line for people without mqttctl:

    python3 -m mqttbridge pub -t TOPIC -m MESSAGE [-q QOS] [-r]
    python3 -m mqttbridge sub -t FILTER [-t FILTER...] [-q QOS] [-C COUNT] [-v]

The socket is -s PATH, else $MQTTBRIDGE_SOCKET, else /run/mqttbridge/mqttbridge.sock."""
import argparse
import asyncio
import sys

from .client import MQTTClient


async def pub(args, client):
    ok = await client.publish(args.topic[0], args.message, args.qos, args.retain)
    if not ok:
        print(f"mqttbridge: publish failed: {client.get_last_error() or 'not connected'}",
              file=sys.stderr)
        return 1
    return 0


async def sub(args, client):
    done = asyncio.Event()
    count = 0

    def on_message(_client, topic, payload, _retain):
        nonlocal count
        text = payload.decode(errors="replace")
        print(f"{topic} {text}" if args.verbose else text, flush=True)
        count += 1
        if args.count and count >= args.count:
            done.set()
    client.on_message = on_message
    for t in args.topic:
        if not await client.subscribe(t, args.qos):
            print(f"mqttbridge: cannot subscribe to {t}: {client.get_last_error()}",
                  file=sys.stderr)
            return 1
    await done.wait()
    return 0


async def run(args):
    client = MQTTClient(socket=args.socket, session=args.session)
    if not await client.connect(args.timeout):
        print(f"mqttbridge: {client.get_last_error()}", file=sys.stderr)
        return 1
    try:
        return await (pub(args, client) if args.cmd == "pub" else sub(args, client))
    finally:
        await client.disconnect()


def main(argv=None):
    p = argparse.ArgumentParser(prog="python3 -m mqttbridge", description=__doc__.split("\n")[0])
    p.add_argument("-s", "--socket", help="the daemon's socket")
    p.add_argument("-w", "--timeout", type=float, default=10, help="seconds to connect")
    cmds = p.add_subparsers(dest="cmd", required=True)
    pp = cmds.add_parser("pub", help="publish one message")
    pp.add_argument("-t", "--topic", action="append", required=True)
    pp.add_argument("-m", "--message", required=True)
    pp.add_argument("-q", "--qos", type=int, default=0, choices=(0, 1, 2))
    pp.add_argument("-r", "--retain", action="store_true")
    sp = cmds.add_parser("sub", help="print messages")
    sp.add_argument("-t", "--topic", action="append", required=True)
    sp.add_argument("-q", "--qos", type=int, default=0, choices=(0, 1, 2))
    sp.add_argument("-C", "--count", type=int, default=0, help="exit after COUNT messages")
    sp.add_argument("-v", "--verbose", action="store_true", help="print the topic too")
    sp.add_argument("--session", help="within this named session (acknowledging each message)")
    args = p.parse_args(argv)
    if args.cmd == "pub":
        args.session = None
    try:
        return asyncio.run(run(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""An aiomqttc program, written from aiomqttc's API document alone; the only change for
mqttbridge is the import below (it was `from aiomqttc import MQTTClient, MqttStats`).

It subscribes to demo/#, publishes three messages at QoS 0, 1 and 2, prints what comes back
and the statistics, and exits. The broker is the daemon's: server/port are ignored (logged).
The socket is $MQTTBRIDGE_SOCKET, else /run/mqttbridge/mqttbridge.sock."""
import asyncio

from mqttbridge import MQTTClient, MqttStats


async def main():
    stats = MqttStats()
    client = MQTTClient(client_id="demo", server="localhost", port=1883, keepalive=30,
                        stats=stats)
    received = asyncio.Queue()

    async def on_connect(client, rc):
        print("connected, rc", rc)

    async def on_message(client, topic, payload, retain):
        await received.put((topic, payload))

    client.on_connect = on_connect
    client.on_message = on_message
    if not await client.connect(timeout_sec=10):
        print("cannot connect:", client.get_last_error())
        return 1
    await client.subscribe("demo/#", qos=1)
    for qos in (0, 1, 2):
        ok = await client.publish(f"demo/{qos}", f"hello at qos {qos}", qos=qos)
        print("published at qos", qos, ok)
    for _ in range(3):
        topic, payload = await asyncio.wait_for(received.get(), 10)
        print("received", topic, payload.decode())
    print("pub_ok_count >= 3:", stats.get_stats()["pub_ok_count"] >= 3)
    await client.disconnect()
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))

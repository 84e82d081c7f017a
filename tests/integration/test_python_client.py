#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""The Python package (clients/python, the aiomqttc API) against the real daemon and
mosquitto: the seed document's API as it is written, return values included, many publishers
in one event loop, the daemon restarting under a client, named sessions, the small CLI."""
import asyncio
import os
import signal
import subprocess
import sys

from harness import TEST_PROTOCOL, WAIT, TestCase, main, paused

PYDIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../clients/python")
sys.path.insert(0, PYDIR)
from mqttbridge import Error, MQTTClient, MqttStats  # noqa: E402

KEYS = {"packets_sent", "packets_received", "bytes_sent", "bytes_received", "pub_ok_count",
        "pub_fail_count", "pub_rtt_ms", "pub_package_avg_size", "sub_package_avg_size",
        "connections_sent", "connections_failed", "ping_sent_count", "ping_received_count",
        "ping_rtt_ms"}


async def until(pred, what, timeout=WAIT):
    """Await a condition another task makes true (bounded)."""
    end = asyncio.get_running_loop().time() + timeout
    while not pred():
        if asyncio.get_running_loop().time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


class PythonClient(TestCase):
    def setUp(self):
        super().setUp()
        self.m = self.broker()
        self.d = self.daemon(self.m.port, sections={"ipc": {"mode": "0666"}})

    def client(self, **kw):
        return MQTTClient(socket=self.d.socket, **kw)

    def run_async(self, coro):
        return asyncio.run(asyncio.wait_for(coro, WAIT * 6))

    def test_the_seed_api_as_documented(self):
        async def body():
            stats = MqttStats()
            c = self.client(client_id=None, server=None, port=1883, user=None, password=None,
                            keepalive=60, ssl=False, ssl_params=None, verbose=0, stats=stats,
                            clean_session=True, will_topic=None, will_message=None,
                            will_qos=0, will_retain=False)
            seen = {"connect": [], "disconnect": [], "message": [], "callback": []}

            async def on_connect(client, rc):
                seen["connect"].append((client, rc))
            c.on_connect = on_connect
            c.on_disconnect = lambda client, rc: seen["disconnect"].append(rc)

            async def on_message(client, topic, payload, retain):
                seen["message"].append((topic, payload, retain))
            c.on_message = on_message
            # Not connected yet: the documented failure values.
            self.assertIsNone(await c.publish("t/x", "early"))
            self.assertFalse(await c.subscribe("t/#"))
            self.assertTrue(await c.connect(timeout_sec=10))
            await until(lambda: seen["connect"], "on_connect")
            self.assertEqual(seen["connect"], [(c, 0)])
            self.assertIsNone(c.get_last_error())

            def callback(topic, payload, retain):
                seen["callback"].append((topic, payload, retain))
            self.assertTrue(await c.subscribe("t/#", qos=1, callback=callback))
            for qos in (0, 1, 2):
                self.assertIs(await c.publish(f"t/{qos}", f"m{qos}", qos=qos), True)
            self.assertIs(await c.publish("t/bytes", b"\x00\xff", qos=1, retain=False), True)
            await until(lambda: len(seen["message"]) == 4, "4 messages")
            self.assertEqual(sorted(seen["message"]),
                             [("t/0", b"m0", False), ("t/1", b"m1", False), ("t/2", b"m2", False),
                              ("t/bytes", b"\x00\xff", False)])
            self.assertEqual(sorted(seen["callback"]), sorted(seen["message"]))
            self.assertTrue(await c.unsubscribe("t/#"))
            self.assertFalse(await c.unsubscribe("t/#"))  # not subscribed any more
            daemon_stats = await c.update_stats()
            got = stats.get_stats()
            self.assertEqual(set(got), KEYS)
            self.assertGreaterEqual(got["pub_ok_count"], 4)
            self.assertEqual(got["pub_ok_count"], daemon_stats["pub_ok_count"])
            stats.reset()
            self.assertEqual(stats.get_stats()["pub_ok_count"], 0)
            await c.disconnect()
            await until(lambda: seen["disconnect"], "on_disconnect")
            self.assertEqual(seen["disconnect"], [None])
            self.assertIsNone(await c.publish("t/x", "late"))
            self.assertFalse(await c.unsubscribe("t/#"))
        self.run_async(body())

    def test_a_standalone_stats_object_counts_as_aiomqttc(self):
        s = MqttStats()
        s.connect()
        s.connect_fail()
        s.publish(True, 10, 100)
        s.publish(True, 20, 50)
        s.publish(False, 0, 30)
        s.receive(40)
        s.ping_sent()
        s.ping_received(6)
        got = s.get_stats()
        self.assertEqual(set(got), KEYS)
        self.assertEqual((got["pub_ok_count"], got["pub_fail_count"], got["pub_rtt_ms"]),
                         (2, 1, 15))
        self.assertEqual((got["pub_package_avg_size"], got["sub_package_avg_size"]), (60, 40))
        self.assertEqual((got["connections_sent"], got["connections_failed"]), (1, 1))
        self.assertEqual((got["ping_sent_count"], got["ping_received_count"],
                          got["ping_rtt_ms"]), (1, 1, 6))
        s.reset()
        self.assertEqual(set(s.get_stats().values()), {0})

    def test_publish_false_when_the_broker_does_not_confirm_in_time(self):
        async def body():
            c = self.client()
            self.assertTrue(await c.connect())
            self.m.stop()
            await until(lambda: not c.connected, "the broker link to drop")
            self.assertIs(await c.publish("t", "x", qos=1, timeout=0.3), False)
            self.assertIn("no", (c.get_last_error() or "").lower())
            self.m.start()
            await until(lambda: c.connected, "the broker link to come back")
            self.assertIs(await c.publish("t", "y", qos=1), True)
            await c.disconnect()
        self.run_async(body())

    def test_connect_fails_cleanly(self):
        async def body():
            c = MQTTClient(socket=os.path.join(self.tmp, "nothing.sock"))
            self.assertFalse(await c.connect(timeout_sec=1))
            self.assertIn("cannot reach mqttbridged", c.get_last_error())
            self.assertIsNone(await c.publish("t", "x"))
            await c.disconnect()
            self.m.stop()  # the daemon is there, its broker is not
            c = self.client()
            self.assertFalse(await c.connect(timeout_sec=0.5))
            self.assertIsNotNone(c.get_last_error())
        self.run_async(body())

    def test_bad_input_raises_clearly(self):
        async def body():
            c = self.client()
            self.assertTrue(await c.connect())
            with self.assertRaises(TypeError):
                await c.publish(42, "x")
            with self.assertRaises(TypeError):
                await c.publish("t", 3.5)
            with self.assertRaises(ValueError):
                await c.publish("t", "x", qos=3)
            with self.assertRaises(Error) as e:
                await c.publish("a/#", "x")
            self.assertEqual(e.exception.code, "bad_request")
            with self.assertRaises(Error) as e:
                await c.subscribe("a/#/b")
            self.assertEqual(e.exception.code, "bad_request")
            with self.assertRaises(TypeError):
                await c.publish("t", "x", colour="red")
            self.assertIs(await c.publish("t", "still fine"), True)
            await c.disconnect()
        self.run_async(body())

    def test_100_concurrent_publishers_in_one_loop(self):
        async def body():
            sub = self.client()
            got = []
            sub.on_message = lambda c, t, p, r: got.append(p)
            self.assertTrue(await sub.connect())
            self.assertTrue(await sub.subscribe("many/#", qos=1))
            pubs = [self.client() for _ in range(100)]
            self.assertEqual(await asyncio.gather(*(p.connect() for p in pubs)), [True] * 100)

            async def ten(i, p):
                return [await p.publish(f"many/{i}", f"{i}-{k}", qos=1) for k in range(10)]
            results = await asyncio.gather(*(ten(i, p) for i, p in enumerate(pubs)))
            self.assertEqual(results, [[True] * 10] * 100)
            await until(lambda: len(got) == 1000, "1000 messages")
            self.assertEqual(sorted(got), sorted(f"{i}-{k}".encode() for i in range(100)
                                                 for k in range(10)))
            await asyncio.gather(*(p.disconnect() for p in pubs), sub.disconnect())
        self.run_async(body())

    def test_the_daemon_restarting_under_a_client(self):
        async def body():
            c = self.client()
            events, got = [], []
            c.on_connect = lambda client, rc: events.append(("connect", rc))
            c.on_disconnect = lambda client, rc: events.append(("disconnect", rc))
            c.on_message = lambda client, t, p, r: got.append(p)
            self.assertTrue(await c.connect())
            self.assertTrue(await c.subscribe("r/#", qos=1))
            await until(lambda: events == [("connect", 0)], "on_connect")
            # A publish the daemon holds (its broker is away) when the daemon dies: None.
            self.m.stop()
            await until(lambda: events[-1][0] == "disconnect", "the broker link down")
            self.assertIsInstance(events[-1][1], int)  # the errno the daemon gave
            pending = asyncio.ensure_future(c.publish("r/x", "held", qos=1, timeout=60))
            other = self.client()
            self.assertTrue(await other.connect(timeout_sec=0) is False)  # broker away
            await asyncio.get_running_loop().run_in_executor(None, self.d.stop, signal.SIGKILL)
            self.assertIsNone(await asyncio.wait_for(pending, WAIT))
            await until(lambda: ("disconnect", -1) in events, "on_disconnect(-1)")
            self.assertIsNone(await c.publish("r/x", "while away", qos=1))
            self.m.start()
            await asyncio.get_running_loop().run_in_executor(None, self.d.start)
            await until(lambda: c.connected, "the client to reach the daemon again")
            await until(lambda: events[-1] == ("connect", 0), "on_connect again")
            other = self.client()
            self.assertTrue(await other.connect())
            self.assertIs(await other.publish("r/y", "after", qos=1), True)
            await until(lambda: got == [b"after"], "the message, through the subscription "
                        "made again")
            await asyncio.gather(c.disconnect(), other.disconnect())
        self.run_async(body())

    def test_named_session_acknowledges_after_the_callback(self):
        async def body():
            got = []
            c = self.client(session="py-worker", session_expiry=60)
            c.on_message = lambda client, t, p, r: got.append(p)
            self.assertTrue(await c.connect())
            self.assertTrue(await c.subscribe("job/#", qos=1))
            p = self.client()
            self.assertTrue(await p.connect())
            for i in range(5):
                self.assertIs(await p.publish("job/a", f"j{i}", qos=1), True)
            await until(lambda: len(got) == 5, "5 jobs")
            await c.disconnect()
            for i in range(5, 8):
                self.assertIs(await p.publish("job/a", f"j{i}", qos=1), True)
            c = self.client(session="py-worker")
            got.clear()
            c.on_message = lambda client, t, p, r: got.append(p)
            self.assertTrue(await c.connect())
            await until(lambda: len(got) == 3, "the 3 that came while it was away")
            self.assertEqual(got, [b"j5", b"j6", b"j7"])  # the first 5 were acknowledged
            await asyncio.gather(c.disconnect(), p.disconnect())
        self.run_async(body())

    def test_request_response(self):
        if TEST_PROTOCOL == "3.1.1":
            self.skipTest("request needs MQTT 5 on the broker link")

        async def body():
            responder, requester = self.client(), self.client()

            async def answer(client, m):
                await client.publish(m.properties["response_topic"], b"pong:" + m.payload,
                                     correlation_data=m.properties["correlation_data"])
            responder.on_message5 = answer
            self.assertTrue(await responder.connect())
            self.assertTrue(await responder.subscribe("svc/ping"))
            self.assertTrue(await requester.connect())
            r = await requester.request("svc/ping", "hello", timeout=5)
            self.assertEqual(r.payload, b"pong:hello")
            with self.assertRaises(Error) as e:
                await requester.request("svc/nobody", "x", timeout=0.3)
            self.assertIn(e.exception.code, ("timeout", "refused"))
            await asyncio.gather(responder.disconnect(), requester.disconnect())
        self.run_async(body())

    def test_an_aiomqttc_program_runs_unchanged_but_its_import(self):
        example = os.path.join(PYDIR, "../examples/aiomqttc_app.py")
        r = subprocess.run([sys.executable, example], capture_output=True, timeout=WAIT * 2,
                           env=dict(os.environ, MQTTBRIDGE_SOCKET=self.d.socket,
                                    PYTHONPATH=PYDIR))
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        lines = r.stdout.decode().splitlines()
        self.assertEqual(lines[0], "connected, rc 0")
        self.assertEqual(lines[1:4], [f"published at qos {q} True" for q in (0, 1, 2)])
        self.assertEqual(sorted(lines[4:7]), [f"received demo/{q} hello at qos {q}"
                                              for q in (0, 1, 2)])
        self.assertEqual(lines[7], "pub_ok_count >= 3: True")
        self.assertIn(b"ignored: server='localhost', port=1883, client_id='demo'", r.stderr)

    def test_careless_and_hostile_timing(self):
        async def body():
            # Two connects at once: one connection.
            c = self.client()
            self.assertEqual(await asyncio.gather(c.connect(), c.connect()), [True, True])
            with self.d.client() as a:
                self.assertEqual(a.ok("status")["status"]["local_clients"], 2)
            with self.assertRaises(TypeError):
                await c.subscribe("t", callback=5)
            # disconnect() from inside a callback returns at once.
            done = asyncio.Event()

            async def leave(client, topic, payload, retain):
                await client.disconnect()
                done.set()
            c.on_message = leave
            self.assertTrue(await c.subscribe("leave/#"))
            self.assertIs(await c.publish("leave/now", "x"), True)
            await asyncio.wait_for(done.wait(), 3)
            self.assertFalse(c.connected)
            # connect() waiting for the broker gives up when disconnect() is called.
            self.m.stop()
            c2 = self.client()
            t = asyncio.ensure_future(c2.connect(timeout_sec=30))
            await until(lambda: c2._usable(), "the connection to the daemon")
            await c2.disconnect()
            self.assertFalse(await asyncio.wait_for(t, 3))
            self.m.start()
            # A daemon that stops answering (SIGSTOP): the call ends, False.
            c3 = self.client()
            self.assertTrue(await c3.connect())
            with paused(self.d.proc):
                t0 = asyncio.get_running_loop().time()
                self.assertIs(await c3.publish("t", "x", qos=1, timeout=0.2), False)
                self.assertLess(asyncio.get_running_loop().time() - t0, 4)
            await c3.disconnect()
        self.run_async(body())
        # The same client in another event loop.
        c = self.client()
        for _ in range(2):
            async def again():
                self.assertTrue(await c.connect())
                self.assertIs(await c.publish("t", "y"), True)
                await c.disconnect()
            self.run_async(again())

    def hog(self):
        """A connection holding one of the daemon's slots. The harness's readiness check may
        hold one a moment longer (its close not read yet): a refused hog tries again."""
        for _ in range(100):
            h = self.d.client()
            try:
                h.ok("ping")
                return h
            except EOFError:
                h.close()
        self.fail("no free slot for a hog")

    def test_one_reconnect_at_a_time_against_a_full_daemon(self):
        self.d.stop()
        self.d.write_config(dict(self.d.cfg, ipc=dict(self.d.cfg["ipc"], max_clients="2")))
        self.d.start()

        async def body():
            c = self.client()
            self.assertTrue(await c.connect())
            await asyncio.get_running_loop().run_in_executor(None, self.d.stop, signal.SIGKILL)
            # Started and filled without yielding to the event loop: the client's reconnect
            # cannot run until every slot is taken.
            self.d.start()
            hogs = [self.hog(), self.hog()]  # every slot taken
            refused = self.d.logtext().count("too many clients")
            try:
                await until(lambda: self.d.logtext().count("too many clients") >= refused + 3,
                            "three refused attempts")
                self.assertLessEqual(len([t for t in c._tasks
                                          if t.get_name() == "mqttbridge-reconnect"]), 1)
            finally:
                for h in hogs:
                    h.close()
            await until(lambda: c.connected, "the client back")
            with self.d.client() as a:  # the client and this one: nothing left over
                self.assertEqual(a.ok("status")["status"]["local_clients"], 2)
            await c.disconnect()
        self.run_async(body())

    def test_a_slow_callback_holds_the_reader_back(self):
        async def body():
            sub = self.client()
            most, got = 0, []

            async def slow(client, topic, payload, retain):
                nonlocal most
                most = max(most, client._events.qsize())
                got.append(payload)
                await asyncio.sleep(0)
            sub.on_message = slow
            self.assertTrue(await sub.connect())
            self.assertTrue(await sub.subscribe("flood/#"))
            with self.d.client() as p:
                for i in range(3000):
                    p.send({"op": "publish", "topic": "flood/x", "payload": str(i),
                            "wait": False})
                p.ok("ping")
            await until(lambda: len(got) == 3000, "3000 messages", timeout=WAIT * 3)
            self.assertLessEqual(most, 1001)  # MAX_QUEUED: the rest waited in the socket
            await sub.disconnect()
        self.run_async(body())

    def test_the_cli(self):
        env = dict(os.environ, MQTTBRIDGE_SOCKET=self.d.socket, PYTHONPATH=PYDIR)
        sub = subprocess.Popen([sys.executable, "-m", "mqttbridge", "sub", "-t", "cli/#", "-q",
                                "1", "-C", "2", "-v"], stdout=subprocess.PIPE, env=env)
        try:
            with self.d.client() as a:  # the subscription is in place before publishing
                from harness import wait_until
                wait_until(lambda: a.ok("status")["status"]["subscriptions"] == 1,
                           what="the CLI's subscription")
            for i in range(2):
                r = subprocess.run([sys.executable, "-m", "mqttbridge", "pub", "-t", "cli/x",
                                    "-m", f"hello {i}", "-q", "1"], env=env, timeout=WAIT,
                                   capture_output=True)
                self.assertEqual(r.returncode, 0, r.stderr)
            out, _ = sub.communicate(timeout=WAIT)
        finally:
            sub.kill()
        self.assertEqual(out.decode().splitlines(), ["cli/x hello 0", "cli/x hello 1"])
        r = subprocess.run([sys.executable, "-m", "mqttbridge", "-s", "/nonexistent", "pub",
                            "-t", "x", "-m", "y"], env=env, timeout=WAIT, capture_output=True)
        self.assertEqual(r.returncode, 1)
        self.assertIn(b"cannot reach mqttbridged", r.stderr)


if __name__ == "__main__":
    main()

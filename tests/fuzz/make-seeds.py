#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Write the seed corpora of the fuzz harnesses (run once; the output is committed)."""
import os
import struct
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))


def write(name, seeds):
    d = os.path.join(HERE, "corpus", name)
    os.makedirs(d, exist_ok=True)
    for i, data in enumerate(seeds):
        with open(os.path.join(d, f"seed-{i:03d}"), "wb") as f:
            f.write(data if isinstance(data, bytes) else data.encode())


packets = [bytes.fromhex(h) for h in [
    "100d00044d5154540402003c000161",
    "102000044d51545404ec000a00036369640003772f7400036279650001750002707077",
    "20020000", "20020100", "20020005",
    "300700036162686901", "3b0900036162000a6869", "34090003612f6212346869",
    "40020001", "50020002", "62020003", "7002ffff",
    "820c000a0003612f2b010001233b02"[:-4] + "02",
    "9005000a010280", "a20a000b0003612f2b000123", "b002000b", "c000", "d000", "e000",
]]
# MQTT 5 (the harness reads a first byte 0x05 as "what follows is MQTT 5"): the vectors of
# tests/unit/test_codec5.c, written from the standard's layouts.
packets5 = [bytes.fromhex(h.replace(" ", "")) for h in [
    "10 2c 00 04 4d 51 54 54 05 ce 00 0a 05 11 00 00 00 0a 00 03 63 69 64 05 18 00 00 00 3c"
    " 00 03 77 2f 74 00 03 62 79 65 00 01 75 00 02 70 77",
    "10 30 00 04 4d 51 54 54 05 02 00 3c 23 11 ff ff ff ff 15 00 01 6d 16 00 01 64 17 00"
    " 19 01 21 00 64 22 00 40 27 00 00 04 00 26 00 01 6b 00 01 76 00 00",
    "20 1f 00 00 1c 12 00 01 78 13 00 1e 21 00 02 22 00 05 24 01 25 00 27 00 00 02 00 28 01"
    " 29 01 2a 00",
    "20 0e 00 9c 0b 1c 00 03 68 3a 31 1f 00 02 67 6f", "20 03 01 00 00", "20 02 00 01",
    "32 2d 00 03 61 2f 62 00 0a 23 01 01 02 00 00 0e 10 03 00 01 74 08 00 01 72 09 00 01 63"
    " 23 00 03 0b 01 0b 80 80 01 26 00 01 6b 00 01 76 68 69",
    "30 07 00 00 03 23 00 03 78", "40 03 00 01 10", "40 09 00 01 87 05 1f 00 02 6e 6f",
    "62 03 00 03 92", "82 0f 00 0a 02 0b 05 00 03 61 2f 2b 2d 00 01 23 02",
    "90 07 00 0a 00 01 02 87 a1", "a2 0b 00 0b 00 00 03 61 2f 2b 00 01 23",
    "b0 09 00 0b 04 1f 00 01 78 00 11", "e0 0f 8e 0d 11 00 00 00 00 1f 00 05 74 61 6b 65 6e",
    "e0 06 9c 04 1c 00 01 62", "f0 0a 18 08 15 00 01 6d 16 00 01 64",
]]
write("codec", [b"".join(packets)] + packets + [b"\x30\xff\xff\xff\x7f", b"\x36\x05\x00\x01a\x00\x01"]
      + [b"\x05" + b"".join(packets5)] + [b"\x05" + p for p in packets5])

with open(os.path.join(HERE, "../../config/mqttbridged.conf")) as f:
    example = f.read()
write("config", [example, "[broker]\nhost = a:1, [::1]:2\nkeepalive = 0\n",
                 "[ipc]\nmax_line = 64K\nmode = 0600\n", "[will]\ntopic = a/#\n", "no section\n"])

requests = [
    '{"id":1,"op":"publish","topic":"a/b","payload":"hi","qos":1,"retain":true,"wait":false}',
    '{"id":"x","op":"publish","topic":"t","payload_b64":"AAEC/w==","timeout_ms":100}',
    '{"id":[1],"op":"subscribe","filter":"$share/g/a/+","qos":2,"encoding":"base64"}',
    '{"op":"unsubscribe","filter":"a/#"}', '{"op":"status"}', '{"op":"stats"}',
    '{"op":"ping"}', '{"op":"events","connection":true,"ping":false}', '{"op":"reconnect"}',
    '{"op":"stats_reset"}', '{"op":"reload"}', 'not json', '[1]', '{"op":5}',
    '{"op":"publish","topic":"a","payload":"a\\u0000b"}',
    # MQTT 5 fields
    '{"id":2,"op":"request","topic":"s","payload":"x","qos":1,"user_properties":[["a","b"],'
    '["a","c"]],"content_type":"t","payload_format":1,"message_expiry":5,"timeout_ms":100}',
    '{"op":"publish","topic":"a","payload":"x","response_topic":"r/s","correlation_data_b64":'
    '"AP8="}',
    '{"op":"subscribe","filter":"a/#","no_local":true,"retain_as_published":true,'
    '"retain_handling":1}',
]
write("request", requests)
write("ndjson", ["\n".join(requests) + "\n", "a\r\nb\n\n" + "x" * 200 + "\nc", "\n\n\n"])

pub1 = b"\x32\x08\x00\x03a/b\x00\x07x"
pub2 = b"\x34\x08\x00\x03a/b\x00\x08y"
write("session", [b"\x06" + pub1 + b"\x03\x62\x02\x00\x08", b"\x09" + pub2,
                  b"\x04\x90\x03\x00\x01\x00", b"\x01\xd0\x00", b"\x03\x50\x02\x00\x01",
                  b"\x03\x40\x02\x00\x01", b"\x00\x00",
                  # MQTT 5 (a first byte 0x05): a PUBLISH setting alias 1, one using it, a
                  # refusing PUBACK and SUBACK, the broker's DISCONNECT with a reason
                  b"\x05\x0d" + bytes.fromhex("320c0003612f62000703230001 78".replace(" ", ""))
                  + b"\x0a" + bytes.fromhex("3209000000080323000179"),
                  b"\x05\x04" + bytes.fromhex("4003000187") + b"\x05" + bytes.fromhex("900400010087"),
                  b"\x05\x03" + bytes.fromhex("e0028e00")])


def record(body):
    ln = struct.pack("<I", len(body))
    return struct.pack("<I", zlib.crc32(ln + body)) + ln + body


add = record(bytes([1]) + struct.pack("<Q", 7) + bytes([1, 1]) + struct.pack("<HI", 3, 2)
             + b"a/bhi")
done = record(bytes([2]) + struct.pack("<Q", 7))
# ADD5 (format 3): qos 1, retain, topic "a/b", payload "hi", expiry, a Content Type property
add5 = record(bytes([7]) + struct.pack("<Q", 8) + bytes([1, 1]) + struct.pack("<HI", 3, 2)
              + struct.pack("<QI", 1700000000000, 4) + b"a/bhi" + b"\x03\x00\x01t")


def salted(body, salt):
    ln = struct.pack("<I", len(body))
    return struct.pack("<I", zlib.crc32(ln + body, salt)) + ln + body


# Format 4: a header (salt 0x1234, no held id), a named session with two subscriptions, its
# acknowledgement, a message kept for it, and the session's end.
salt = 0x1234
header = record(bytes([3]) + bytes(8) + b"MQBSPOOL" + struct.pack("<III", 4, salt, 0))
subs = (bytes([1, 1]) + struct.pack("<IH", 17, 3) + b"a/#"
        + bytes([2, 6]) + struct.pack("<IH", 0, 1) + b"b")
session = salted(bytes([8]) + struct.pack("<Q", 9) + struct.pack("<IIQQQQQHI", 1000, 3600,
                 1700000000000, 5, 3, 1, 2, 7, len(subs)) + b"billing" + subs, salt)
ack = salted(bytes([9]) + struct.pack("<QQ", 9, 4), salt)
kept = salted(bytes([10]) + struct.pack("<Q", 10) + struct.pack("<QQQ", 9, 5, 1700000000001)
              + bytes([1, 3]) + struct.pack("<HII", 3, 2, 0) + b"a/xhi", salt)
end = salted(bytes([2]) + struct.pack("<Q", 9), salt)
write("spool", [add + done, add, add[:-3], done * 3, add5 + done, add5[:-2],
                header + session + ack + kept + end, header + session + kept[:-4]])

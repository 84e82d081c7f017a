/* SPDX-License-Identifier: MIT */
/* Fuzz the request schema layer: every line gets a request or an error with a known code,
 * and an error reply can always be written for it. */
#include <stdlib.h>

#include "ipc/protocol.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    Request req;
    IpcError err;
    Buf out = {0};
    if (request_parse(VIEW(data, size), &req, &err) < 0) {
        if (err.code < IPC_BAD_JSON || err.code > IPC_INTERNAL ||
            reply_error(&out, req.id, err.code, err.message) != 0) {
            abort();
        }
    } else if (req.op >= OP_COUNT) {
        abort();
    } else if (req.op == OP_PUBLISH || req.op == OP_REQUEST) {
        /* What parsed must also be writable as a message event, its properties included: the
         * block the parser encoded must read back as a PUBLISH's. */
        MqttProps props;
        if (mqtt_props_check(buf_view(&req.props), MQTT_PUBLISH, &props) != 0 ||
            event_message(&out, req.topic, req.payload, req.qos, req.retain, false, &props) != 0 ||
            reply_response(&out, req.id, req.topic, req.payload, true, &props) != 0) {
            abort();
        }
    }
    request_free(&req);
    buf_free(&out);
    return 0;
}

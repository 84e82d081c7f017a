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
    } else if (req.op == OP_PUBLISH) {
        /* What parsed must also be writable as a message event. */
        if (event_message(&out, req.topic, req.payload, req.qos, req.retain, false, NULL) != 0) {
            abort();
        }
    }
    request_free(&req);
    buf_free(&out);
    return 0;
}

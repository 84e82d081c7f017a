/* SPDX-License-Identifier: MIT */
/* Hold the hot requests' fast path (lib/ipc/fast.c) to jansson's answers: whatever line it
 * takes, request_parse takes too and reads the same request from it. */
#include <stdlib.h>
#include <string.h>

#include "ipc/fast.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool same_view(View a, View b)
{
    return a.n == b.n && (a.n == 0 || memcmp(a.p, b.p, a.n) == 0);
}

static bool same_id(json_t *a, json_t *b)
{
    return (!a && !b) || (a && b && json_equal(a, b));
}

static bool same(const Request *f, const Request *s)
{
    return f->op == s->op && same_id(f->id, s->id) && same_view(f->topic, s->topic) &&
           same_view(f->payload, s->payload) && f->qos == s->qos && f->retain == s->retain &&
           f->wait == s->wait && f->timeout_ms == s->timeout_ms && f->seq == s->seq &&
           buf_size(&f->props) == buf_size(&s->props) && f->message_expiry == s->message_expiry &&
           f->v5_field == s->v5_field && f->encoding == s->encoding;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static FastScratch scratch; /* kept from input to input, as the daemon keeps it */
    Request fast, slow;
    IpcError err;
    int taken = request_parse_fast(VIEW(data, size), &fast, &scratch);
    int r = request_parse(VIEW(data, size), &slow, &err);
    if (taken != 0 && taken != 1) {
        abort();
    }
    if (taken && (r < 0 || !same(&fast, &slow))) {
        abort(); /* the fast path read something jansson reads otherwise */
    }
    if (taken) {
        request_free(&fast);
    }
    request_free(&slow);
    return 0;
}

/* SPDX-License-Identifier: MIT */
/* Fuzz spool recovery's record parser over a whole segment's bytes. */
#include <stdlib.h>

#include "spool/record.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    View in = VIEW(data, size);
    SpoolRecord r;
    while (in.n && spool_record_parse(in, &r) == 1) {
        if (r.size == 0 || r.size > in.n) {
            abort();
        }
        in = VIEW(in.p + r.size, in.n - r.size);
    }
    return 0;
}

/* SPDX-License-Identifier: MIT */
/* Fuzz NDJSON framing: any bytes, any split, never a line over the limit. */
#include <stdlib.h>

#include "ipc/ndjson.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    LineReader lr;
    size_t max = 64;
    line_reader_init(&lr, max);
    size_t step = size ? (size_t)data[0] % 13 + 1 : 1;
    for (size_t i = 0; i < size; i += step) {
        size_t n = size - i < step ? size - i : step;
        if (line_reader_feed(&lr, data + i, n) < 0) {
            break;
        }
        View line;
        int r;
        while ((r = line_reader_next(&lr, &line)) != 0) {
            if (r > 0 && (line.n > max || memchr(line.p, '\n', line.n))) {
                abort();
            }
        }
    }
    line_reader_free(&lr);
    return 0;
}

/* SPDX-License-Identifier: MIT */
/* NDJSON framing: see ndjson.h. */
#include "ipc/ndjson.h"

#include <errno.h>

void line_reader_init(LineReader *lr, size_t max_line)
{
    *lr = (LineReader){.max_line = max_line};
}

void line_reader_free(LineReader *lr)
{
    buf_free(&lr->in);
}

uint8_t *line_reader_space(LineReader *lr, size_t want)
{
    if (buf_reserve(&lr->in, want) < 0) {
        return NULL;
    }
    return lr->in.data + lr->in.len;
}

void line_reader_commit(LineReader *lr, size_t n)
{
    lr->in.len += n;
}

int line_reader_feed(LineReader *lr, const void *p, size_t n)
{
    return buf_append(&lr->in, p, n);
}

size_t line_reader_pending(const LineReader *lr)
{
    return buf_size(&lr->in);
}

bool line_reader_ready(const LineReader *lr)
{
    View v = buf_view(&lr->in);
    return v.n > lr->scanned && memchr(v.p + lr->scanned, '\n', v.n - lr->scanned);
}

int line_reader_next(LineReader *lr, View *ret_line)
{
    for (;;) {
        View v = buf_view(&lr->in);
        const uint8_t *nl =
            v.n > lr->scanned ? memchr(v.p + lr->scanned, '\n', v.n - lr->scanned) : NULL;
        if (!nl) {
            lr->scanned = v.n;
            if (lr->discarding) {
                buf_clear(&lr->in);
                lr->scanned = 0;
                return 0;
            }
            if (v.n > lr->max_line) {
                lr->discarding = true;
                buf_clear(&lr->in);
                lr->scanned = 0;
                return -E2BIG;
            }
            return 0;
        }
        size_t len = (size_t)(nl - v.p);
        buf_consume(&lr->in, len + 1);
        lr->scanned = 0;
        if (lr->discarding) {
            lr->discarding = false; /* the tail of an over-long line: already reported */
            continue;
        }
        if (len && v.p[len - 1] == '\r') {
            len--;
        }
        if (len > lr->max_line) {
            return -E2BIG;
        }
        *ret_line = VIEW(v.p, len);
        return 1;
    }
}

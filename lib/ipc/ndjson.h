/* SPDX-License-Identifier: MIT */
/*
 * NDJSON framing: bytes in, whole lines out. A line ends at '\n'; a '\r' before it is
 * dropped. A line longer than max_line is reported once as -E2BIG and its bytes are
 * discarded up to and including its '\n', so the stream stays usable after it.
 */
#pragma once

#include "buf.h"

typedef struct LineReader {
    Buf in;
    size_t max_line;
    size_t scanned;  /* bytes of `in` known to hold no '\n' */
    bool discarding; /* inside an over-long line */
} LineReader;

void line_reader_init(LineReader *lr, size_t max_line);
void line_reader_free(LineReader *lr);
/* Room to read into: at least `want` bytes; then commit what was written. */
uint8_t *line_reader_space(LineReader *lr, size_t want);
void line_reader_commit(LineReader *lr, size_t n);
int line_reader_feed(LineReader *lr, const void *p, size_t n);
/* 1 with the next line (valid until the next space/feed), 0 when none is complete, -E2BIG
 * once for each over-long line. */
int line_reader_next(LineReader *lr, View *ret_line);
/* Whether a whole line is waiting (line_reader_next has one to give). */
bool line_reader_ready(const LineReader *lr);
/* Bytes waiting (a partial line), e.g. to notice a client that hung up mid-request. */
size_t line_reader_pending(const LineReader *lr);

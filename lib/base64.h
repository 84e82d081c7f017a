/* SPDX-License-Identifier: MIT */
/* Standard base64 (RFC 4648, '+' '/' alphabet, '=' padding), for binary payloads in JSON. */
#pragma once

#include "buf.h"

/* Append the encoding of `in` to `out`. */
int base64_encode(Buf *out, View in);
/* Append the decoding of `in` to `out`; -EINVAL on any character outside the alphabet, bad
 * padding or a truncated quantum (padding may be omitted). */
int base64_decode(Buf *out, View in);

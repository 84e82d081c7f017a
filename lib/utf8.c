/* SPDX-License-Identifier: MIT */
/* Strict UTF-8 validation: see utf8.h. */
#include "utf8.h"

bool utf8_valid(View s, bool allow_nul)
{
    if (s.n == 0) {
        return true; /* s.p may be NULL: no pointer arithmetic on it */
    }
    const uint8_t *p = s.p, *end = s.p + s.n;

    while (p < end) {
        uint8_t c = *p;
        if (c < 0x80) {
            if (c == 0 && !allow_nul) {
                return false;
            }
            p++;
            continue;
        }
        size_t need;
        uint32_t cp, min;
        if ((c & 0xe0) == 0xc0) {
            need = 1, cp = c & 0x1f, min = 0x80;
        } else if ((c & 0xf0) == 0xe0) {
            need = 2, cp = c & 0x0f, min = 0x800;
        } else if ((c & 0xf8) == 0xf0) {
            need = 3, cp = c & 0x07, min = 0x10000;
        } else {
            return false; /* continuation byte first, or 0xf8..0xff */
        }
        if ((size_t)(end - p) <= need) {
            return false;
        }
        for (size_t i = 1; i <= need; i++) {
            if ((p[i] & 0xc0) != 0x80) {
                return false;
            }
            cp = cp << 6 | (p[i] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) {
            return false;
        }
        p += need + 1;
    }
    return true;
}

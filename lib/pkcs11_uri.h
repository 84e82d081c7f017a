/* SPDX-License-Identifier: MIT */
/*
 * PKCS#11 URIs (RFC 7512) for [tls] key_file: "pkcs11:token=edge;object=device-key" names a
 * private key in a token (by its label, `object`, and/or its CKA_ID, `id`). Pure: parsing only;
 * daemon/tls.c uses the token through wolfSSL.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct Pkcs11Uri {
    char token[33];   /* the token's label ("" : the first token with the key) */
    char object[256]; /* the key's label ("" : by id) */
    uint8_t id[64];   /* the key's CKA_ID */
    size_t id_len;
} Pkcs11Uri;

/* Whether `s` is a PKCS#11 URI (rather than a file name). */
bool pkcs11_uri_is(const char *s);
/* Parse: 0, or -EINVAL with `err` saying why (an unknown or repeated attribute, a bad
 * percent-escape, a value too long, neither object nor id, a PIN or module in the URI). */
int pkcs11_uri_parse(const char *uri, Pkcs11Uri *ret, char *err, size_t errlen);

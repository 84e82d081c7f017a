/* SPDX-License-Identifier: MIT */
/* PKCS#11 URIs (RFC 7512) as [tls] key_file takes them (lib/pkcs11_uri.c). */
#include <string.h>

#include "pkcs11_uri.h"
#include "testutil.h"

START_TEST(parses_what_rfc_7512_writes)
{
    Pkcs11Uri u;
    char err[200];
    ck_assert(pkcs11_uri_is("pkcs11:object=k"));
    ck_assert(!pkcs11_uri_is("/etc/mqttbridge/client.key"));
    ck_assert_int_eq(pkcs11_uri_parse("pkcs11:token=edge;object=device-key", &u, err, sizeof(err)),
                     0);
    ck_assert_str_eq(u.token, "edge");
    ck_assert_str_eq(u.object, "device-key");
    ck_assert_uint_eq(u.id_len, 0);
    /* Percent-escapes, an id of bytes, the type, attributes that only narrow the search. */
    ck_assert_int_eq(pkcs11_uri_parse("pkcs11:model=SoftHSM%20v2;token=My%20token;id=%01%ff;"
                                      "type=private;serial=abc",
                                      &u, err, sizeof(err)),
                     0);
    ck_assert_str_eq(u.token, "My token");
    ck_assert_uint_eq(u.id_len, 2);
    ck_assert_mem_eq(u.id, "\x01\xff", 2);
    ck_assert_str_eq(u.object, "");
}
END_TEST

START_TEST(refuses_what_it_cannot_use)
{
    Pkcs11Uri u;
    char err[200];
    static const struct {
        const char *uri, *why;
    } bad[] = {
        {"pkcs11:token=edge", "name the key with object= or id="},
        {"pkcs11:object=k;colour=red", "unknown attribute 'colour'"},
        {"pkcs11:object=k;object=j", "bad value of 'object'"},
        {"pkcs11:object=a%zz", "bad value of 'object'"},
        {"pkcs11:object=a%2", "bad value of 'object'"},
        {"pkcs11:object=a%00b", "bad value of 'object'"},
        {"pkcs11:token=;object=k;token=edge", "bad value of 'token'"},
        {"pkcs11:id=;id=%01;object=k", "bad value of 'id'"},
        {"pkcs11:object=k;type=public", "bad value of 'type'"},
        {"pkcs11:object=k?pin-value=1234", "no query part"},
        {"pkcs11:object", "is not name=value"},
        {"pkcs11:=x", "is not name=value"},
        {"file.key", "not a PKCS#11 URI"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        ck_assert_int_lt(pkcs11_uri_parse(bad[i].uri, &u, err, sizeof(err)), 0);
        ck_assert_msg(strstr(err, bad[i].why), "%s: %s", bad[i].uri, err);
    }
    char big[400] = "pkcs11:object=";
    memset(big + strlen(big), 'x', 300);
    ck_assert_int_lt(pkcs11_uri_parse(big, &u, err, sizeof(err)), 0); /* over 255 bytes */
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("pkcs11_uri");
    TCase *tc = tcase_create("pkcs11_uri");
    tcase_add_test(tc, parses_what_rfc_7512_writes);
    tcase_add_test(tc, refuses_what_it_cannot_use);
    suite_add_tcase(s, tc);
    return s;
}

CHECK_MAIN(suite)

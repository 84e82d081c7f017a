/* SPDX-License-Identifier: MIT */
/* Unit tests of IdMap: random puts and removes held against a plain array. */
#include <errno.h>
#include <stddef.h>
#include <stdlib.h>

#include "idmap.h"
#include "testutil.h"

typedef struct Obj {
    char pad[3];
    uint32_t id;
} Obj;

START_TEST(empty)
{
    IdMap m;
    idmap_init(&m, offsetof(Obj, id));
    ck_assert_ptr_null(idmap_get(&m, 1));
    ck_assert_ptr_null(idmap_remove(&m, 1));
    idmap_free(&m);
}
END_TEST

START_TEST(same_id_other_object)
{
    IdMap m;
    idmap_init(&m, offsetof(Obj, id));
    Obj a = {.id = 7}, b = {.id = 7};
    ck_assert_int_eq(idmap_put(&m, &a), 0);
    ck_assert_int_eq(idmap_put(&m, &a), 0); /* again: nothing changes */
    ck_assert_int_eq(idmap_put(&m, &b), -EEXIST);
    ck_assert_ptr_eq(idmap_get(&m, 7), &a);
    ck_assert_uint_eq(m.count, 1);
    idmap_free(&m);
}
END_TEST

/* Ids from a small range (many share a home slot, runs wrap around the table's end) and
 * from the whole range, against an array of what should be there. */
START_TEST(random_against_array)
{
    enum { N = 3000 };
    static Obj objs[N];
    static bool in[N];
    uint32_t spread = _i ? UINT32_MAX : 4 * N;
    srand(12345 + (unsigned)_i);
    for (size_t i = 0; i < N; i++) {
        do { /* distinct and not 0 */
            objs[i].id = 1 + (uint32_t)((((uint64_t)rand() << 31) ^ (uint64_t)rand()) % spread);
            for (size_t j = 0; j < i; j++) {
                if (objs[j].id == objs[i].id) {
                    objs[i].id = 0;
                    break;
                }
            }
        } while (!objs[i].id);
        in[i] = false;
    }
    IdMap m;
    idmap_init(&m, offsetof(Obj, id));
    size_t count = 0;
    for (int step = 0; step < 60000; step++) {
        size_t i = (size_t)rand() % N;
        if (rand() % 3) {
            ck_assert_int_eq(idmap_put(&m, &objs[i]), 0);
            count += !in[i];
            in[i] = true;
        } else {
            ck_assert_ptr_eq(idmap_remove(&m, objs[i].id), in[i] ? &objs[i] : NULL);
            count -= in[i];
            in[i] = false;
        }
        ck_assert_uint_eq(m.count, count);
        if (step % 1000 == 0) {
            for (size_t k = 0; k < N; k++) {
                ck_assert_ptr_eq(idmap_get(&m, objs[k].id), in[k] ? &objs[k] : NULL);
            }
            ck_assert(m.count * 4 <= m.n_slots * 3);
        }
    }
    idmap_free(&m);
}
END_TEST

static Suite *idmap_suite(void)
{
    Suite *s = suite_create("idmap");
    TCase *tc = tcase_create("idmap");
    tcase_add_test(tc, empty);
    tcase_add_test(tc, same_id_other_object);
    tcase_add_loop_test(tc, random_against_array, 0, 2);
    suite_add_tcase(s, tc);
    return s;
}

CHECK_MAIN(idmap_suite)

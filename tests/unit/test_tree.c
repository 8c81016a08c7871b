/* test_tree.c - value tree building, wire round trip, hostile wire input. */
#include <stdlib.h>

#include "check.h"
#include "common/tree.h"

static struct tree *sample(struct tree_builder *tb)
{
    struct tree *d = tree_new_dict(tb), *l;

    tree_put_str(tb, d, "name", "disk.qcow2");
    tree_put_int(tb, d, "size", -5);
    tree_put_uint(tb, d, "big", UINT64_MAX);
    tree_put_bool(tb, d, "flag", 1);
    l = tree_put_list(tb, d, "items");
    tree_append(tb, l, tree_new_str(tb, "a"));
    tree_append(tb, l, tree_new_dict(tb));
    return d;
}

static void test_round_trip(void)
{
    struct tree_builder tb;
    struct tree *t, *back;
    uint8_t *wire;
    size_t len = 0;
    int ok;

    tree_builder_init(&tb, &ins_libc_alloc);
    t = sample(&tb);
    CHECK(!tb.failed);
    wire = tree_encode(&ins_libc_alloc, t, &len);
    CHECK(wire != NULL);
    back = tree_decode(&ins_libc_alloc, wire, len);
    CHECK(back != NULL);
    CHECK_STR(tree_get_str(back, "name"), "disk.qcow2");
    CHECK(tree_get_int(back, "size", &ok) == -5 && ok);
    CHECK(tree_get(back, "big")->v.u == UINT64_MAX);
    CHECK(tree_get(back, "flag")->v.b == 1);
    CHECK(tree_get(back, "items")->v.kids.count == 2);
    tree_get_int(back, "missing", &ok);
    CHECK(!ok);

    /* Every truncation of a valid encoding is rejected. */
    for (size_t cut = 0; cut < len; cut++)
        CHECK(tree_decode(&ins_libc_alloc, wire, cut) == NULL);
    /* Trailing garbage is rejected. */
    {
        uint8_t *longer = malloc(len + 1);
        memcpy(longer, wire, len);
        longer[len] = 0;
        CHECK(tree_decode(&ins_libc_alloc, longer, len + 1) == NULL);
        free(longer);
    }
    /* Flipping any byte never crashes (ASan checks the rest). */
    for (size_t i = 0; i < len; i++) {
        uint8_t *copy = malloc(len);
        struct tree *x;

        memcpy(copy, wire, len);
        copy[i] ^= 0xff;
        x = tree_decode(&ins_libc_alloc, copy, len);
        tree_free(&ins_libc_alloc, x);
        free(copy);
    }
    tree_free(&ins_libc_alloc, tree_take(back, "name"));
    CHECK(tree_get(back, "name") == NULL);
    free(wire);
    tree_free(&ins_libc_alloc, t);
    tree_free(&ins_libc_alloc, back);
}

static void test_hostile_wire(void)
{
    /* A list claiming 2^32-1 members in 9 bytes. */
    uint8_t huge[] = { TREE_LIST, 0xff, 0xff, 0xff, 0xff, TREE_BOOL, 0, TREE_BOOL, 0 };
    /* A string with a NUL inside. */
    uint8_t nul[] = { TREE_STR, 3, 0, 0, 0, 'a', 0, 'b' };
    /* A bool that is neither 0 nor 1, and an unknown type. */
    uint8_t badbool[] = { TREE_BOOL, 7 };
    uint8_t badtype[] = { 99 };
    /* Nesting deeper than the limit. */
    uint8_t deep[5 * (TREE_MAX_DEPTH + 2) + 1];
    size_t i;

    /* A dict with the same key twice. */
    uint8_t dup[] = { TREE_DICT, 2, 0, 0, 0,
                      TREE_BOOL, 1, 0, 0, 0, 'k', 1,
                      TREE_BOOL, 1, 0, 0, 0, 'k', 0 };

    CHECK(tree_decode(&ins_libc_alloc, dup, sizeof(dup)) == NULL);
    dup[17] = 'j';
    {
        struct tree *ok = tree_decode(&ins_libc_alloc, dup, sizeof(dup));
        CHECK(ok != NULL);
        tree_free(&ins_libc_alloc, ok);
    }
    CHECK(tree_decode(&ins_libc_alloc, huge, sizeof(huge)) == NULL);
    CHECK(tree_decode(&ins_libc_alloc, nul, sizeof(nul)) == NULL);
    CHECK(tree_decode(&ins_libc_alloc, badbool, sizeof(badbool)) == NULL);
    CHECK(tree_decode(&ins_libc_alloc, badtype, sizeof(badtype)) == NULL);
    for (i = 0; i < TREE_MAX_DEPTH + 2; i++) {
        deep[5 * i] = TREE_LIST;
        deep[5 * i + 1] = 1;
        deep[5 * i + 2] = deep[5 * i + 3] = deep[5 * i + 4] = 0;
    }
    deep[5 * i] = TREE_BOOL;
    CHECK(tree_decode(&ins_libc_alloc, deep, sizeof(deep)) == NULL);
}

static void test_builder_limit(void)
{
    struct tree_builder tb;
    struct tree *d;
    int i;

    tree_builder_init(&tb, &ins_libc_alloc);
    tb.max_bytes = 4096;
    d = tree_new_dict(&tb);
    for (i = 0; i < 1000; i++)
        tree_put_str(&tb, d, "key", "a value that takes some room");
    CHECK(tb.failed);
    CHECK(tb.bytes <= 4096);
    tree_free(&ins_libc_alloc, d);
}

int main(void)
{
    test_round_trip();
    test_hostile_wire();
    test_builder_limit();
    return check_report("test_tree");
}

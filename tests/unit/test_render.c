/* test_render.c - qemu's size formatting and QDict ordering. */
#include <stdlib.h>

#include "check.h"
#include "host/render.h"

static const char *size(uint64_t n, int ignore)
{
    static char buf[64];

    render_size(buf, sizeof(buf), n, ignore);
    return buf;
}

static void test_sizes(void)
{
    /* Values checked against qemu-img's output. */
    CHECK_STR(size(0, 0), "0 B");
    CHECK_STR(size(512, 0), "512 B");
    CHECK_STR(size(999, 0), "999 B");
    CHECK_STR(size(1000, 0), "0.977 KiB");
    CHECK_STR(size(4096, 0), "4 KiB");
    CHECK_STR(size(196608, 0), "192 KiB");
    CHECK_STR(size(197120, 0), "192 KiB");      /* 192.5: ties to even */
    CHECK_STR(size(200704, 0), "196 KiB");
    CHECK_STR(size(328192, 0), "320 KiB");
    CHECK_STR(size(1073741824, 0), "1 GiB");
    CHECK_STR(size(21692416, 0), "20.7 MiB");
    CHECK_STR(size(9116319744ULL, 0), "8.49 GiB");
    CHECK_STR(size(UINT64_MAX, 0), "16 EiB");
    /* --ignore-quirks: one decimal, no banker's rounding. */
    CHECK_STR(size(197120, 1), "192.5 KiB");
    CHECK_STR(size(1073741824, 1), "1 GiB");
}

static void test_buckets(void)
{
    /* qemu's tdb_hash % 512 for keys whose order qemu-img shows. */
    CHECK(render_qdict_bucket("children") == 206);
    CHECK(render_qdict_bucket("backing-filename-format") == 206);
    CHECK(render_qdict_bucket("virtual-size") == 309);
    CHECK(render_qdict_bucket("filename") == 313);
    CHECK(render_qdict_bucket("dirty-flag") == 501);
    CHECK(render_qdict_bucket("compat") == 16);
}

static void test_json_order(void)
{
    struct tree_builder tb;
    struct tree *d;
    char *text = NULL;
    size_t len = 0;
    FILE *f;

    tree_builder_init(&tb, &ins_libc_alloc);
    d = tree_new_dict(&tb);
    /* Schema order; qemu prints children (same bucket, inserted later)
     * before backing-filename-format. */
    tree_put_str(&tb, d, "filename", "a");
    tree_put_str(&tb, d, "backing-filename-format", "qcow2");
    tree_put_list(&tb, d, "children");
    tree_put_str(&tb, d, "s", "q\"\\\n\x01/\xc3\xa9\xf0\x9f\x98\x80\xff");
    f = open_memstream(&text, &len);
    render_json(f, d);
    fclose(f);
    CHECK_STR(text,
              "{\n"
              "    \"s\": \"q\\\"\\\\\\n\\u0001/\\u00E9\\uD83D\\uDE00\\uFFFD\",\n"
              "    \"children\": [\n    ],\n"
              "    \"backing-filename-format\": \"qcow2\",\n"
              "    \"filename\": \"a\"\n"
              "}");
    free(text);
    tree_free(&ins_libc_alloc, d);
}

int main(void)
{
    test_sizes();
    test_buckets();
    test_json_order();
    return check_report("test_render");
}

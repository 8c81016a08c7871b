/*
 * fuzz_tree.c - a libFuzzer target for the worker-to-host wire form.
 *
 * The host decodes whatever the sandboxed worker sends back, and a worker
 * that a hostile image took over may send anything: tree_decode and the
 * renderers are the host's whole attack surface on that channel.  Each
 * input is decoded; a tree that decodes is encoded again (which must give
 * a tree that decodes) and rendered as info in every style.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "common/tree.h"
#include "fuzz_common.h"
#include "host/render.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static FILE *sink;
    struct profile p72 = { 7, 2 }, p100 = { 10, 0 };
    struct fuzz_heap heap;
    struct ins_alloc alloc;
    struct tree *t, *again;
    uint8_t *wire;
    size_t len;

    if (!sink)
        sink = fopen("/dev/null", "w");
    fuzz_heap_init(&heap, &alloc);
    t = tree_decode(&alloc, data, size);
    if (!t)
        return 0;
    wire = tree_encode(&alloc, t, &len);
    if (wire) {
        again = tree_decode(&alloc, wire, len);
        if (!again) {
            fprintf(stderr, "an encoded tree does not decode\n");
            abort();
        }
        tree_free(&alloc, again);
        alloc.free(alloc.opaque, wire);
    }
    if (t->type == TREE_DICT && sink) {
        render_json(sink, t);
        render_info_json(sink, t);
        render_info_human(sink, t, &p72, 0);
        render_info_human(sink, t, &p100, 1);
    }
    tree_free(&alloc, t);
    return 0;
}

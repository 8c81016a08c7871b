/*
 * fuzz_driver.c - a libFuzzer target for one format driver, chosen at
 * compile time with -DFUZZ_FORMAT=\"qcow2\" (the Makefile builds one
 * binary per format: build-fuzz/fuzz_<fmt>).
 *
 * Each input is one image file.  The target runs what the worker runs on
 * an image: every probe (detection, safe and unsafe rules), open + info,
 * then an open for reading with its backing chain, block status over the
 * image, bounded reads of guest bytes, map, and check.  References the
 * image makes (backing files, extents, data files) are served from the
 * same input a few times and then refused, so chains and multi-extent
 * images are exercised without touching the filesystem.
 *
 * Work per input is capped so that a petabyte virtual size cannot time
 * the fuzzer out: at most STATUS_CALLS block status calls, READ_BUDGET
 * bytes of guest data, MAP_SPAN bytes of map, MAP_EMITS map batches;
 * check runs only on images up to CHECK_MAX_SIZE (and see table_too_big).
 *
 * Invariants checked (abort() makes libFuzzer report the input):
 * every failure but check's leaves a non-empty ctx->errmsg, block
 * status never reports an empty run, and the engine frees all it
 * allocated.  (A message may hold a newline copied from the image, as
 * qemu's does: the host prints it on one line.)
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/check.h"
#include "engine/engine.h"
#include "fuzz_common.h"

#ifndef FUZZ_FORMAT
#error "build with -DFUZZ_FORMAT=\"fmt\""
#endif

#define STATUS_CALLS 10000
#define READ_BUDGET  (16u << 20)
#define READ_CHUNK   (1u << 20)
#define MAP_SPAN     (4ull << 30)
#define MAP_EMITS    256
#define MAX_REFS     4
#define CHECK_MAX_SIZE (256ull << 30)

struct fuzz_run {
    const uint8_t *data;
    size_t len;
    int n_refs;
    struct fuzz_mem mem[MAX_REFS];
    struct ins_bdev bd[MAX_REFS];
    int n_emits;
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* An engine error must say something. */
static void check_errmsg(const struct ins_ctx *ctx, int rc, const char *where)
{
    if (rc >= 0)
        return;
    if (!ctx->errmsg[0]) {
        fprintf(stderr, "%s: bad error message for rc %d: '%s'\n", where, rc,
                ctx->errmsg);
        abort();
    }
}

/* Serves the input itself for the first MAX_REFS references. */
static int serve_ref(struct ins_ctx *ctx, enum ins_ref_kind kind,
                     const char *base, const char *name,
                     struct ins_bdev **out)
{
    struct fuzz_run *run = ctx->ref_opaque;
    int i = run->n_refs;

    (void)kind; (void)base;
    if (i >= MAX_REFS)
        return ins_error(ctx, INS_EREFUSED, "reference '%s' refused", name);
    run->n_refs++;
    fuzz_bdev_init(&run->bd[i], &run->mem[i], run->data, run->len, "ref.img");
    *out = &run->bd[i];
    return INS_OK;
}

static int count_emit(struct ins_ctx *ctx, const struct tree *part)
{
    struct fuzz_run *run = ctx->ref_opaque;

    (void)part;
    if (++run->n_emits > MAP_EMITS)
        return ins_error(ctx, INS_EFBIG, "fuzz: enough map output");
    return INS_OK;
}

static void ctx_init(struct ins_ctx *ctx, struct ins_alloc *alloc,
                     struct fuzz_run *run, unsigned flags)
{
    memset(ctx, 0, sizeof(*ctx));
    ctx->alloc = alloc;
    ctx->flags = flags;
    ctx->open_ref = serve_ref;
    ctx->ref_opaque = run;
    ctx->emit = count_emit;
    run->n_refs = 0;
    run->n_emits = 0;
}

static void do_detect(struct ins_ctx *ctx, struct ins_bdev *bd)
{
    struct ins_detect det;

    ins_detect(ctx, bd, &det);
    ctx->flags |= INS_F_UNSAFE_QUIRKS;
    ins_detect(ctx, bd, &det);
    ctx->flags &= ~INS_F_UNSAFE_QUIRKS;
}

static void do_info(struct ins_ctx *ctx, struct ins_bdev *bd,
                    const struct ins_driver *drv)
{
    struct tree_builder tb;
    struct tree *out = NULL;
    int rc;

    tree_builder_init(&tb, ctx->alloc);
    rc = ins_op_info(ctx, bd, "fuzz.img", drv, 0, &tb, &out);
    check_errmsg(ctx, rc, "info");
    if (out)
        tree_free(ctx->alloc, out);
}

/* Block status through the chain, reading a bounded part of each run. */
static void do_read(struct ins_ctx *ctx, struct ins_image *img)
{
    uint64_t off = 0, size = img->virtual_size, budget = READ_BUDGET;
    uint8_t *buf = malloc(READ_CHUNK);
    int calls;

    if (!buf)
        return;
    for (calls = 0; calls < STATUS_CALLS && off < size; calls++) {
        struct ins_bstat st;
        uint64_t n;
        int rc;

        memset(&st, 0, sizeof(st));
        rc = ins_status_above(img, off, size - off, &st, NULL);
        check_errmsg(ctx, rc, "block status");
        if (rc < 0)
            break;
        if (st.pnum == 0) {
            fprintf(stderr, "block status at %llu: empty run\n",
                    (unsigned long long)off);
            abort();
        }
        if (st.pnum > size - off)
            st.pnum = size - off;
        /* Data runs get most of the budget; others a taste (backing). */
        n = st.pnum < READ_CHUNK ? st.pnum : READ_CHUNK;
        if (!(rc & INS_BS_DATA) && n > 4096)
            n = 4096;
        if (n <= budget) {
            budget -= n;
            rc = ins_image_read(img, buf, (size_t)n, off);
            check_errmsg(ctx, rc, "read");
        }
        off += st.pnum;
    }
    /* A read straddling the end of the virtual disk and one unaligned. */
    if (size >= 3 && budget >= 4096) {
        uint64_t at = size > 4096 ? size - 4096 : 0;
        int rc = ins_image_read(img, buf, (size_t)(size - at), at);

        check_errmsg(ctx, rc, "tail read");
        rc = ins_image_read(img, buf, 3, size / 2 - 1);
        check_errmsg(ctx, rc, "odd read");
    }
    free(buf);
}

static void do_map(struct ins_ctx *ctx, struct ins_image *img, int human)
{
    int64_t span = img->virtual_size < MAP_SPAN ? (int64_t)img->virtual_size
                                                : (int64_t)MAP_SPAN;
    int rc = ins_op_map(ctx, img, 0, span, human, !human);

    check_errmsg(ctx, rc, "map");
}

/*
 * Tables whose length is a header field of its own, not tied to the disk
 * size: a VDI block map (qemu's check, and ours, reports every bad entry
 * of up to 512 Mi) and a Parallels BAT (our check walks 2^27 entries past
 * the end of a 140-byte file in 16 s, qemu's in 0.5 s: reported).  The CPU
 * limit bounds both in production; here they would only time out.
 */
static int table_too_big(struct ins_bdev *bd)
{
    uint64_t at;
    uint8_t b[4];

    if (strcmp(FUZZ_FORMAT, "vdi") == 0)
        at = 384;
    else if (strcmp(FUZZ_FORMAT, "parallels") == 0)
        at = 32;
    else
        return 0;
    if (ins_read(bd, b, 4, at) < 0)
        return 0;
    return ins_le32(b) > (1u << 18);
}

static void do_check(struct ins_ctx *ctx, struct ins_bdev *bd,
                     const struct ins_driver *drv)
{
    struct ins_image *img = NULL;
    struct ins_check_result res;
    int rc;

    if (!drv->check)
        return;
    /* Check may print a line per table entry (qemu does: a million for a
     * big VDI block map): format them, but do not build trees for them. */
    ctx->emit = NULL;
    rc = drv->open(ctx, bd, INS_O_READ | INS_O_CHECK, &img);
    check_errmsg(ctx, rc, "open for check");
    if (rc < 0)
        return;
    /* Checks walk tables sized by the virtual disk (a VDI block map of a
     * few TiB is millions of entries, each reported): bounded by the
     * worker's CPU limit in production, too slow for a fuzzer here. */
    if (img->virtual_size > CHECK_MAX_SIZE || table_too_big(bd)) {
        drv->close(img);
        return;
    }
    /* A check that fails says only its code ("Check failed: File too
     * large"), as qemu's does: no message to demand. */
    ins_op_check(ctx, img, 0, &res);
    drv->close(img);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const struct ins_driver *drv = ins_find_driver(FUZZ_FORMAT);
    struct fuzz_heap heap;
    struct ins_alloc alloc;
    struct fuzz_run run;
    struct fuzz_mem mem;
    struct ins_bdev bd;
    struct ins_ctx ctx;
    struct ins_image *img = NULL;
    int rc;

    if (!drv)
        abort();
    fuzz_heap_init(&heap, &alloc);
    run.data = data;
    run.len = size;
    fuzz_bdev_init(&bd, &mem, data, size, "fuzz.img");

    /* The input's length picks a qemu version and unsafe mode, so both
     * rule sets get exercised without spending input bytes. */
    ctx_init(&ctx, &alloc, &run,
             (size & 1 ? 702u << INS_F_QEMU_SHIFT : 0) |
             (size & 2 ? INS_F_UNSAFE_QUIRKS : 0));
    do_detect(&ctx, &bd);
    do_info(&ctx, &bd, drv);

    ctx_init(&ctx, &alloc, &run, ctx.flags);
    rc = ins_image_open(&ctx, &bd, drv, INS_O_READ, 1, &img);
    check_errmsg(&ctx, rc, "open");
    if (rc == INS_OK) {
        do_read(&ctx, img);
        do_map(&ctx, img, (size & 4) != 0);
        ins_image_close(img);
    }

    ctx_init(&ctx, &alloc, &run, ctx.flags);
    do_check(&ctx, &bd, drv);

    if (heap.live != 0) {
        fprintf(stderr, "engine leaked %zu bytes\n", heap.live);
        abort();
    }
    return 0;
}

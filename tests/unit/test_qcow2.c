/* test_qcow2.c - the qcow2 info driver on an in-memory image: a valid
 * image with every header extension, then many random mutations of it
 * (run under `make SANITIZE=1` to catch memory errors). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "membdev.h"

#define CL      65536u
#define IMGSIZE (8 * CL)

static int no_refs(struct ins_ctx *ctx, enum ins_ref_kind kind,
                   const char *base, const char *name, struct ins_bdev **out)
{
    (void)kind; (void)base; (void)name; (void)out;
    return ins_error(ctx, INS_EREFUSED, "no references in unit tests");
}

static void be16(uint8_t *p, uint16_t v) { p[0] = v >> 8; p[1] = (uint8_t)v; }
static void be32(uint8_t *p, uint32_t v) { be16(p, v >> 16); be16(p + 2, (uint16_t)v); }
static void be64(uint8_t *p, uint64_t v) { be32(p, v >> 32); be32(p + 4, (uint32_t)v); }

static size_t put_ext(uint8_t *p, uint32_t magic, const void *data, uint32_t len)
{
    be32(p, magic);
    be32(p + 4, len);
    memcpy(p + 8, data, len);
    return 8 + ((len + 7) & ~7u);
}

/* A v3 image: extensions, backing name, 3 snapshots, 2 bitmaps. */
static void build(uint8_t *img)
{
    uint8_t ext[48], feat[96];
    size_t off = 112, i;
    uint8_t *sn, *bm;

    memset(img, 0, IMGSIZE);
    memcpy(img, "QFI\xfb", 4);
    be32(img + 4, 3);
    be32(img + 20, 16);                     /* cluster bits */
    be64(img + 24, 64ull << 20);            /* size */
    be32(img + 36, 1);                      /* l1 size */
    be64(img + 40, 3 * CL);                 /* l1 offset */
    be64(img + 48, CL);                     /* refcount table */
    be32(img + 56, 1);
    be32(img + 60, 3);                      /* snapshots */
    be64(img + 64, 4 * CL);
    be64(img + 72, 1 | 4);                  /* dirty, data file */
    be64(img + 80, 1);                      /* lazy refcounts */
    be64(img + 88, 1 | 2);                  /* bitmaps, data file raw */
    be32(img + 96, 4);
    be32(img + 100, 112);

    off += put_ext(img + off, 0xe2792aca, "qcow2", 5);
    memset(feat, 0, sizeof(feat));
    feat[0] = 0; feat[1] = 0; memcpy(feat + 2, "dirty bit", 9);
    feat[48] = 1; feat[49] = 0; memcpy(feat + 50, "lazy refcounts", 14);
    off += put_ext(img + off, 0x6803f857, feat, sizeof(feat));
    off += put_ext(img + off, 0x44415441, "data.raw", 8);
    memset(ext, 0, sizeof(ext));
    be32(ext, 2);
    be64(ext + 8, 64);                      /* directory size */
    be64(ext + 16, 5 * CL);
    off += put_ext(img + off, 0x23852875, ext, 24);
    off += 8;                               /* end extension */
    be64(img + 8, off);
    be32(img + 16, 8);
    memcpy(img + off, "base.img", 8);

    be64(img + CL, 2 * CL);                 /* refcount table -> block */
    for (i = 0; i < 8; i++)
        be16(img + 2 * CL + 2 * i, 1);

    sn = img + 4 * CL;
    for (i = 0; i < 3; i++) {
        be16(sn + 12, 1);
        be16(sn + 14, 4);
        be32(sn + 16, 1700000000u + (uint32_t)i);
        be64(sn + 24, 1000000000ull * i);
        be32(sn + 36, 24);
        be64(sn + 40, 4096 * i);
        be64(sn + 48, 64ull << 20);
        be64(sn + 56, i == 1 ? UINT64_MAX : 77);
        sn[64] = (uint8_t)('1' + i);
        memcpy(sn + 65, "snap", 4);
        sn += 72;
    }

    bm = img + 5 * CL;
    for (i = 0; i < 2; i++) {
        be64(bm, 6 * CL);
        be32(bm + 8, 1);
        be32(bm + 12, i ? 1 : 2);           /* in-use, auto */
        bm[16] = 1;
        bm[17] = 16;
        be16(bm + 18, 2);
        bm[24] = 'b';
        bm[25] = (uint8_t)('0' + i);
        bm += 32;
    }
}

/* Opens for reading (INS_O_READ): the data file is refused here. */
static int run_open_read(uint8_t *img, size_t len, char *err, size_t errlen)
{
    struct membuf m = { img, len };
    struct ins_bdev bd = { .opaque = &m, .pread = mem_pread, .size = len,
                           .allocated = len, .name = "t.qcow2" };
    struct ins_image *im = NULL;
    struct ins_ctx ctx;
    int rc;

    memset(&ctx, 0, sizeof(ctx));
    ctx.alloc = &ins_libc_alloc;
    ctx.open_ref = no_refs;
    rc = ins_drv_qcow2.open(&ctx, &bd, INS_O_READ, &im);
    if (rc == INS_OK)
        ins_drv_qcow2.close(im);
    snprintf(err, errlen, "%s", ctx.errmsg);
    return rc;
}

static int run_info(uint8_t *img, size_t len, struct tree **out, char *err,
                    size_t errlen)
{
    struct membuf m = { img, len };
    struct ins_bdev bd = { .opaque = &m, .pread = mem_pread, .size = len,
                           .allocated = len, .name = "t.qcow2" };
    struct ins_ctx ctx;
    struct tree_builder tb;
    int rc;

    memset(&ctx, 0, sizeof(ctx));
    ctx.alloc = &ins_libc_alloc;
    ctx.open_ref = no_refs;
    tree_builder_init(&tb, &ins_libc_alloc);
    *out = NULL;
    rc = ins_op_info(&ctx, &bd, "t.qcow2", &ins_drv_qcow2, 0, &tb, out);
    snprintf(err, errlen, "%s", ctx.errmsg);
    return rc;
}

static void test_valid(uint8_t *img)
{
    struct tree *t, *spec, *data, *snaps, *bitmaps;
    char err[1024];
    int ok;
    int rc = run_info(img, IMGSIZE, &t, err, sizeof(err));

    CHECK(rc == INS_OK);
    if (rc != INS_OK) {
        fprintf(stderr, "open failed: %s\n", err);
        return;
    }
    CHECK(tree_get_int(t, "virtual-size", &ok) == 64 << 20 && ok);
    CHECK(tree_get_int(t, "cluster-size", &ok) == CL && ok);
    CHECK(tree_get(t, "dirty-flag")->v.b == 1);
    CHECK_STR(tree_get_str(t, "backing-filename"), "base.img");
    CHECK_STR(tree_get_str(t, "backing-filename-format"), "qcow2");
    snaps = tree_get(t, "snapshots");
    CHECK(snaps && snaps->v.kids.count == 3);
    if (snaps && snaps->v.kids.count == 3) {
        struct tree *s0 = snaps->v.kids.first, *s1 = s0->next;

        CHECK_STR(tree_get_str(s0, "id"), "1");
        CHECK_STR(tree_get_str(s0, "name"), "snap");
        CHECK(tree_get_int(s0, "icount", &ok) == 77 && ok);
        tree_get_int(s1, "icount", &ok);
        CHECK(!ok);
        CHECK(tree_get_int(s1, "vm-state-size", &ok) == 4096 && ok);
    }
    spec = tree_get(t, "format-specific");
    data = spec ? tree_get(spec, "data") : NULL;
    CHECK(data != NULL);
    if (data) {
        CHECK_STR(tree_get_str(data, "compat"), "1.1");
        CHECK_STR(tree_get_str(data, "data-file"), "data.raw");
        CHECK(tree_get(data, "data-file-raw")->v.b == 1);
        CHECK(tree_get(data, "lazy-refcounts")->v.b == 1);
        CHECK(tree_get_int(data, "refcount-bits", &ok) == 16 && ok);
        CHECK_STR(tree_get_str(data, "compression-type"), "zlib");
        bitmaps = tree_get(data, "bitmaps");
        CHECK(bitmaps && bitmaps->v.kids.count == 2);
        if (bitmaps && bitmaps->v.kids.count == 2) {
            CHECK_STR(tree_get_str(bitmaps->v.kids.first, "name"), "b0");
            CHECK(tree_get_int(bitmaps->v.kids.first, "granularity", &ok) == 65536);
        }
    }
    tree_free(&ins_libc_alloc, t);
}

/* A message is one line and never empty. */
static int good_message(const char *s)
{
    return s[0] && !strchr(s, '\n');
}

static void test_mutations(const uint8_t *base)
{
    uint8_t *img = malloc(IMGSIZE);
    uint64_t seed = 0x9e3779b97f4a7c15ull;
    int i, failures = 0, successes = 0;

    for (i = 0; i < 30000; i++) {
        struct tree *t;
        char err[1024];
        int n, k, rc;
        size_t len = IMGSIZE;

        memcpy(img, base, IMGSIZE);
        n = 1 + i % 4;
        for (k = 0; k < n; k++) {
            size_t pos;

            seed ^= seed << 13; seed ^= seed >> 7; seed ^= seed << 17;
            switch (seed % 4) {
            case 0: pos = (seed >> 8) % 128; break;            /* header */
            case 1: pos = (seed >> 8) % 512; break;            /* + extensions */
            case 2: pos = 4 * CL + (seed >> 8) % 256; break;   /* snapshots */
            default: pos = 5 * CL + (seed >> 8) % 64; break;   /* bitmaps */
            }
            img[pos] ^= (uint8_t)(1u << ((seed >> 40) % 8));
            if ((seed >> 50) % 7 == 0)
                img[pos] = (uint8_t)(seed >> 32);
        }
        if (i % 97 == 0)
            len = (size_t)((seed >> 20) % IMGSIZE);    /* truncated file */
        if (i % 5 == 0) {
            rc = run_open_read(img, len, err, sizeof(err));
            CHECK(rc == INS_OK || good_message(err));
            continue;
        }
        rc = run_info(img, len, &t, err, sizeof(err));
        if (rc == INS_OK) {
            successes++;
            tree_free(&ins_libc_alloc, t);
        } else {
            failures++;
            CHECK(good_message(err));
        }
    }
    CHECK(successes > 1000 && failures > 1000);
    free(img);
}

int main(void)
{
    uint8_t *img = malloc(IMGSIZE);

    build(img);
    test_valid(img);
    {
        char err[1024];

        /* The data file bit makes a read open ask for the data file. */
        CHECK(run_open_read(img, IMGSIZE, err, sizeof(err)) == INS_EREFUSED);
        CHECK_STR(err, "no references in unit tests");
    }
    test_mutations(img);
    free(img);
    return check_report("test_qcow2");
}

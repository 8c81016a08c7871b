/* test_check_formats.c - the vdi/vpc/vhdx/vmdk/qed/parallels checks'
 * helpers and the VDI check on an in-memory image: the sort the overlap
 * checks use, a clean image in both modes, known corruptions, then many
 * random mutations (run under `make SANITIZE=1` to catch memory errors). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/fmt_check.h"
#include "check.h"
#include "membdev.h"

#define MiB     (1u << 20)
#define VDI_LEN (1024 + 2 * MiB)

static int no_refs(struct ins_ctx *ctx, enum ins_ref_kind kind,
                   const char *base, const char *name, struct ins_bdev **out)
{
    (void)kind; (void)base; (void)name; (void)out;
    return ins_error(ctx, INS_EREFUSED, "no references in unit tests");
}

static int lines;

static int count_lines(struct ins_ctx *ctx, const struct tree *part)
{
    const char *s = tree_get_str(part, "stderr");

    (void)ctx;
    for (; s && *s; s++)
        if (*s == '\n')
            lines++;
    if (s)
        lines++;
    return 0;
}

static void le32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16); p[3] = (uint8_t)(v >> 24);
}

static void le64(uint8_t *p, uint64_t v)
{
    le32(p, (uint32_t)v);
    le32(p + 4, (uint32_t)(v >> 32));
}

/* A 4 MiB dynamic VDI with blocks 0 and 2 allocated. */
static void build_vdi(uint8_t *img)
{
    memset(img, 0, VDI_LEN);
    le32(img + 64, 0xbeda107fu);
    le32(img + 68, 0x00010001u);
    le32(img + 76, 1);
    le32(img + 340, 512);
    le32(img + 344, 1024);
    le32(img + 360, 512);
    le64(img + 368, 4 * MiB);
    le32(img + 376, MiB);
    le32(img + 384, 4);
    le32(img + 388, 2);
    le32(img + 512, 0);
    le32(img + 516, 0xffffffffu);
    le32(img + 520, 1);
    le32(img + 524, 0xffffffffu);
}

/* Opens and checks; returns the driver's result code. */
static int run_check(const uint8_t *data, size_t len, unsigned flags,
                     struct ins_check_result *res)
{
    struct membuf m = { data, len };
    struct ins_bdev bd = { .opaque = &m, .pread = mem_pread, .size = len,
                           .name = "t.vdi" };
    struct ins_ctx ctx = { .alloc = &ins_libc_alloc, .open_ref = no_refs,
                           .emit = count_lines, .flags = flags };
    struct ins_image *img;
    int rc;

    memset(res, 0, sizeof(*res));
    lines = 0;
    rc = ins_image_open(&ctx, &bd, &ins_drv_vdi, INS_O_READ | INS_O_CHECK, 0, &img);
    if (rc < 0)
        return rc;
    rc = ins_op_check(&ctx, img, 0, res);
    ins_image_close(img);
    return rc;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

    return x < y ? -1 : x > y;
}

static void test_sort(void)
{
    static uint64_t v[5000];
    size_t n, i;
    int ok;

    srand(7);
    for (n = 0; n < 5000; n = n * 3 + 1) {
        for (i = 0; i < n; i++)
            v[i] = (uint64_t)rand() % 1000;
        ins_check_sort(v, n, sizeof(v[0]), cmp_u64);
        ok = 1;
        for (i = 1; i < n; i++)
            if (v[i - 1] > v[i])
                ok = 0;
        CHECK(ok);
    }
}

static void test_vdi(uint8_t *img)
{
    struct ins_check_result r;

    build_vdi(img);
    CHECK(run_check(img, VDI_LEN, 0, &r) == INS_OK);
    CHECK(r.corruptions == 0 && r.leaks == 0 && lines == 0);
    CHECK(run_check(img, VDI_LEN, INS_F_UNSAFE_QUIRKS, &r) == INS_OK);
    CHECK(r.corruptions == 0 && lines == 0);

    /* Entry 3 reuses block 0: a duplicate and a wrong count. */
    le32(img + 524, 0);
    CHECK(run_check(img, VDI_LEN, INS_F_UNSAFE_QUIRKS, &r) == INS_OK);
    CHECK(r.corruptions == 2 && lines == 2);
    CHECK(run_check(img, VDI_LEN, 0, &r) == INS_OK);
    CHECK(r.corruptions == 2);

    /* Block 2 (data block 1) unreferenced: a leak only the safe check sees. */
    build_vdi(img);
    le32(img + 520, 0xffffffffu);
    le32(img + 388, 1);
    CHECK(run_check(img, VDI_LEN, INS_F_UNSAFE_QUIRKS, &r) == INS_OK);
    CHECK(r.corruptions == 0 && r.leaks == 0);
    CHECK(run_check(img, VDI_LEN, 0, &r) == INS_OK);
    CHECK(r.corruptions == 0 && r.leaks == 1 && lines == 1);

    /* The last block past the end of the file. */
    build_vdi(img);
    CHECK(run_check(img, VDI_LEN - MiB, 0, &r) == INS_OK);
    CHECK(r.corruptions == 1);
}

/* Random mutations of the header and map: never a crash, counters sane. */
static void test_vdi_mutations(uint8_t *img)
{
    struct ins_check_result r;
    int i, k, ok = 1;

    srand(11);
    for (i = 0; i < 3000; i++) {
        build_vdi(img);
        for (k = rand() % 8; k >= 0; k--)
            img[rand() % 1024] = (uint8_t)rand();
        /* Keep the map small: a huge one only makes the test slow. */
        le32(img + 384, (uint32_t)(img[384] | img[385] << 8) % 4096);
        if (run_check(img, VDI_LEN, (unsigned)(i & 1) * INS_F_UNSAFE_QUIRKS,
                      &r) == INS_OK &&
            (r.corruptions < 0 || r.leaks < 0 || r.check_errors < 0))
            ok = 0;
    }
    CHECK(ok);
}

int main(void)
{
    uint8_t *img = malloc(VDI_LEN);

    if (!img)
        return 1;
    test_sort();
    test_vdi(img);
    test_vdi_mutations(img);
    free(img);
    return check_report("test_check_formats");
}

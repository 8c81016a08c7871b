/*
 * test_inspect.c - the inspection engine over in-memory images: verdicts
 * for images built here, that no reference is ever opened, and (under
 * the sanitizer build) that nothing leaks.
 */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "engine/inspect.h"
#include "membdev.h"

static int opened;

static int no_open(struct ins_ctx *ctx, enum ins_ref_kind kind,
                   const char *base, const char *name, struct ins_bdev **out)
{
    (void)kind; (void)base; (void)name; (void)out;
    opened++;
    return ins_error(ctx, INS_EREFUSED, "test: no references");
}

/* Runs inspect; returns the verdict's failures as "a,b,c" in *checks. */
static int inspect(const uint8_t *data, size_t len, const char *expected,
                   char *checks, size_t checks_len, const char **format)
{
    static char fmt[32];
    struct membuf m = { data, len };
    struct ins_bdev bd;
    struct ins_ctx ctx;
    struct ins_inspect_opts opts;
    struct tree_builder tb;
    struct tree *out = NULL, *f, *k;
    const char *s;
    int rc, safe;

    memset(&bd, 0, sizeof(bd));
    bd.opaque = &m;
    bd.pread = mem_pread;
    bd.size = len;
    bd.name = "mem.img";
    memset(&ctx, 0, sizeof(ctx));
    ctx.alloc = &ins_libc_alloc;
    ctx.open_ref = no_open;
    memset(&opts, 0, sizeof(opts));
    opts.expected_format = expected;
    opts.max_virtual_size = INS_INSPECT_MAX_VSIZE;
    opts.vmdk_types = INS_INSPECT_VMDK_TYPES;
    opts.max_ratio = INS_INSPECT_MAX_RATIO;
    tree_builder_init(&tb, &ins_libc_alloc);
    rc = ins_op_inspect(&ctx, &bd, &opts, &tb, &out);
    if (rc < 0)
        return rc;
    checks[0] = '\0';
    f = tree_get(out, "failures");
    for (k = f ? f->v.kids.first : NULL; k; k = k->next)
        snprintf(checks + strlen(checks), checks_len - strlen(checks), "%s%s",
                 checks[0] ? "," : "", tree_get_str(k, "check"));
    s = tree_get_str(out, "format");
    snprintf(fmt, sizeof(fmt), "%s", s ? s : "-");
    *format = fmt;
    safe = tree_get(out, "safe")->v.b;
    tree_free(&ins_libc_alloc, out);
    return safe;
}

static uint8_t *mbr_disk(size_t len, uint8_t boot, uint8_t type)
{
    uint8_t *d = calloc(1, len);
    uint8_t *e = d + 446;

    e[0] = boot;
    e[4] = type;
    e[8] = 0x00; e[9] = 0x08;               /* LBA 2048 */
    e[12] = 0x00; e[13] = 0x10;             /* 4096 sectors */
    d[510] = 0x55;
    d[511] = 0xAA;
    return d;
}

int main(void)
{
    static const char flat[] =
        "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n"
        "createType=\"monolithicFlat\"\n\n# Extent description\n"
        "RW 8192 FLAT \"disk-flat.vmdk\" 0\n\nddb.virtualHWVersion = \"4\"\n";
    static const char text[] = "hello, this is not a disk\n";
    uint8_t luks2[1024], garbage[4096];
    char checks[256];
    const char *format;
    uint8_t *disk;
    size_t i;

    CHECK(inspect((const uint8_t *)text, sizeof(text) - 1, NULL, checks,
                  sizeof(checks), &format) == 0);
    CHECK_STR(checks, "unknown_format");
    CHECK_STR(format, "-");

    for (i = 0; i < sizeof(garbage); i++)
        garbage[i] = (uint8_t)(i * 7919 >> 3);
    CHECK(inspect(garbage, sizeof(garbage), NULL, checks, sizeof(checks),
                  &format) == 0);

    disk = mbr_disk(1 << 20, 0x80, 0x83);
    CHECK(inspect(disk, 1 << 20, NULL, checks, sizeof(checks), &format) == 1);
    CHECK_STR(format, "raw");
    CHECK(inspect(disk, 1 << 20, "qcow2", checks, sizeof(checks), &format) == 0);
    CHECK_STR(checks, "expected_format");
    disk[446] = 0x42;
    CHECK(inspect(disk, 1 << 20, NULL, checks, sizeof(checks), &format) == 0);
    CHECK_STR(checks, "mbr");
    free(disk);

    memset(luks2, 0, sizeof(luks2));
    memcpy(luks2, "LUKS\xba\xbe\x00\x02", 8);
    CHECK(inspect(luks2, sizeof(luks2), NULL, checks, sizeof(checks), &format) == 0);
    CHECK_STR(checks, "version");
    CHECK_STR(format, "luks");

    /* The flat extent is a finding: inspection never opens it. */
    opened = 0;
    CHECK(inspect((const uint8_t *)flat, sizeof(flat) - 1, NULL, checks,
                  sizeof(checks), &format) == 0);
    CHECK_STR(format, "vmdk");
    CHECK_STR(checks, "extents,create_type");
    CHECK(opened == 0);
    return check_report("test_inspect");
}

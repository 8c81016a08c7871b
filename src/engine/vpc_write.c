/*
 * vpc_write.c - writing VHD (vpc) images: dynamic and fixed.
 *
 * The layout is qemu's (block/vpc.c create and write paths):
 *
 *   dynamic:  footer copy at 0, dynamic disk header at 512, BAT at 1536
 *             (0xff-filled, rounded up to a sector), then the footer; every
 *             newly touched 2 MiB block is appended where the footer was:
 *             a 512-byte sector bitmap (all ones) and the block, and the
 *             footer moves behind it.
 *   fixed:    the guest data, then the footer.
 *
 * The virtual size is rounded up to what a CHS geometry can express
 * unless force_size is set (then the creator app is "qem2" and readers
 * use the footer's size).
 */
#include "wutil.h"

#define VPC_BLOCK_SIZE      0x200000u
#define VPC_BITMAP_SIZE     512u        /* 2 MiB / (8 * 512), sector-rounded */
#define VPC_BAT_OFFSET      1536u
#define VPC_TIMESTAMP_BASE  946684800u  /* 2000-01-01 00:00:00 UTC */
#define VPC_CHS_MAX_C       65535u
#define VPC_CHS_MAX_H       16u
#define VPC_CHS_MAX_S       255u
#define VPC_MAX_GEOMETRY    ((uint64_t)VPC_CHS_MAX_C * VPC_CHS_MAX_H * VPC_CHS_MAX_S)
#define VPC_MAX_SECTORS     0xff000000ull   /* 2040 GiB */

enum { VPC_FIXED = 2, VPC_DYNAMIC = 3 };

struct vpc_w {
    struct ins_wimage w;
    int dynamic;
    uint8_t footer[512];
    uint32_t *bat;              /* in host order; 0xffffffff = absent */
    uint32_t n_bat;
    uint64_t free_off;          /* where the next block goes (the footer) */
    uint64_t fixed_size;        /* guest bytes of a fixed image */
};

/* The VHD checksum: one's complement of the byte sum. */
static uint32_t vpc_sum(const uint8_t *p, size_t len)
{
    uint32_t s = 0;

    for (size_t i = 0; i < len; i++)
        s += p[i];
    return ~s;
}

/* The geometry of the VHD spec's algorithm (with up to 255 heads' worth
 * of sectors per track past 127 GiB, as qemu). */
static void vpc_geometry(uint64_t total, uint32_t *cyls, uint32_t *heads,
                         uint32_t *secs)
{
    uint32_t cth;

    if (total > VPC_MAX_GEOMETRY)
        total = VPC_MAX_GEOMETRY;
    if (total >= 65535ull * 16 * 63) {
        *secs = 255;
        *heads = 16;
        cth = (uint32_t)(total / *secs);
    } else {
        *secs = 17;
        cth = (uint32_t)(total / *secs);
        *heads = (cth + 1023) / 1024;
        if (*heads < 4)
            *heads = 4;
        if (cth >= *heads * 1024 || *heads > 16) {
            *secs = 31;
            *heads = 16;
            cth = (uint32_t)(total / *secs);
        }
        if (cth >= *heads * 1024) {
            *secs = 63;
            *heads = 16;
            cth = (uint32_t)(total / *secs);
        }
    }
    *cyls = cth / *heads;
}

/*
 * qemu's calculate_rounded_image_size(): the smallest geometry holding
 * size (in bytes, sector-aligned), and the sector count it implies.
 */
static int vpc_rounded(struct ins_ctx *ctx, uint64_t size, int force,
                       uint32_t *c, uint32_t *h, uint32_t *s,
                       uint64_t *sectors)
{
    uint64_t total;

    *c = *h = *s = 0;
    if (force) {
        *c = VPC_CHS_MAX_C;
        *h = VPC_CHS_MAX_H;
        *s = VPC_CHS_MAX_S;
    } else {
        total = size / 512;
        if (total > VPC_MAX_GEOMETRY)
            total = VPC_MAX_GEOMETRY;
        for (uint64_t i = 0; total > (uint64_t)*c * *h * *s; i++)
            vpc_geometry(total + i, c, h, s);
    }
    if ((uint64_t)*c * *h * *s == VPC_MAX_GEOMETRY) {
        total = size / 512;
        if (total > VPC_MAX_SECTORS)
            return ins_error(ctx, INS_EFBIG,
                             "Disk size is too large, max size is 2040 GiB");
    } else {
        total = (uint64_t)*c * *h * *s;
    }
    *sectors = total;
    return INS_OK;
}

static void vpc_make_footer(struct vpc_w *v, const struct ins_create *cr,
                            uint64_t size, int force, uint32_t c, uint32_t h,
                            uint32_t s)
{
    uint8_t *f = v->footer;
    uint64_t ts = cr->now_unix > VPC_TIMESTAMP_BASE ?
                  cr->now_unix - VPC_TIMESTAMP_BASE : 0;

    memset(f, 0, 512);
    memcpy(f, "conectix", 8);
    w_be32(f + 8, 2);                       /* features: reserved bit */
    w_be32(f + 12, 0x00010000);
    w_be64(f + 16, v->dynamic ? 512 : UINT64_MAX);
    w_be32(f + 24, (uint32_t)ts);
    memcpy(f + 28, force ? "qem2" : "qemu", 4);
    w_be16(f + 32, 5);                      /* Virtual PC 2007 */
    w_be16(f + 34, 3);
    memcpy(f + 36, "Wi2k", 4);
    w_be64(f + 40, size);
    w_be64(f + 48, size);
    w_be16(f + 56, (uint16_t)c);
    f[58] = (uint8_t)h;
    f[59] = (uint8_t)s;
    w_be32(f + 60, v->dynamic ? VPC_DYNAMIC : VPC_FIXED);
    w_uuid(f + 68, cr->random);
    w_be32(f + 64, vpc_sum(f, 512));
}

static int vpc_create_dynamic(struct vpc_w *v)
{
    struct ins_bdev *out = v->w.out;
    uint8_t hdr[1024];
    uint64_t bat_bytes = ((uint64_t)v->n_bat * 4 + 511) & ~511ull;
    uint8_t *ff;
    int rc;

    v->bat = ins_calloc(v->w.ctx, v->n_bat ? v->n_bat : 1, 4);
    if (!v->bat)
        return ins_error(v->w.ctx, INS_ENOMEM, "Cannot allocate memory");
    memset(v->bat, 0xff, (size_t)v->n_bat * 4);
    v->free_off = VPC_BAT_OFFSET + bat_bytes;

    rc = ins_write(out, v->footer, 512, 0);
    if (rc == 0)
        rc = ins_write(out, v->footer, 512, v->free_off);
    if (rc == 0 && bat_bytes) {
        ff = ins_malloc(v->w.ctx, (size_t)bat_bytes);
        if (!ff)
            return ins_error(v->w.ctx, INS_ENOMEM, "Cannot allocate memory");
        memset(ff, 0xff, (size_t)bat_bytes);
        rc = ins_write(out, ff, (size_t)bat_bytes, VPC_BAT_OFFSET);
        ins_free(v->w.ctx, ff);
    }
    if (rc)
        return ins_error(v->w.ctx, rc, "Unable to create or write VHD header");

    memset(hdr, 0, sizeof(hdr));
    memcpy(hdr, "cxsparse", 8);
    w_be64(hdr + 8, UINT64_MAX);            /* data offset: all 64 bits */
    w_be64(hdr + 16, VPC_BAT_OFFSET);
    w_be32(hdr + 24, 0x00010000);
    w_be32(hdr + 28, v->n_bat);
    w_be32(hdr + 32, VPC_BLOCK_SIZE);
    w_be32(hdr + 36, vpc_sum(hdr, sizeof(hdr)));
    rc = ins_write(out, hdr, sizeof(hdr), 512);
    if (rc)
        return ins_error(v->w.ctx, rc, "Unable to create or write VHD header");
    return INS_OK;
}

static int vpc_create(struct ins_ctx *ctx, struct ins_bdev *out,
                      const struct ins_create *cr, struct ins_wimage **img)
{
    const char *sub = wopt_str(cr->opts, "subformat");
    int force = wopt_bool(cr->opts, "force_size", 0);
    struct vpc_w *v;
    uint64_t size, sectors;
    uint32_t c, h, s;
    int dynamic, rc;

    /* qemu creates the file first, then parses the subformat. */
    rc = w_check_file_prealloc(ctx, cr->opts);
    if (rc)
        return rc;
    if (!sub || strcmp(sub, "dynamic") == 0)
        dynamic = 1;
    else if (strcmp(sub, "fixed") == 0)
        dynamic = 0;
    else
        return ins_error(ctx, INS_EINVAL,
                         "Parameter 'subformat' does not accept value '%s'",
                         sub);

    /* Silently rounded up to a sector, then (without force_size) to the
     * geometry; the create itself checks the result again. */
    if (cr->size > UINT64_MAX - 511)
        return ins_error(ctx, INS_EFBIG,
                         "Disk size is too large, max size is 2040 GiB");
    size = (cr->size + 511) & ~511ull;
    if (!force) {
        rc = vpc_rounded(ctx, size, 0, &c, &h, &s, &sectors);
        if (rc)
            return rc;
        size = sectors * 512;
    }
    rc = vpc_rounded(ctx, size, force, &c, &h, &s, &sectors);
    if (rc)
        return rc;

    v = ins_calloc(ctx, 1, sizeof(*v));
    if (!v)
        return ins_error(ctx, INS_ENOMEM, "Cannot allocate memory");
    v->w.wr = &ins_wr_vpc;
    v->w.ctx = ctx;
    v->w.out = out;
    v->w.virtual_size = size;
    v->w.zero_init = 1;
    v->dynamic = dynamic;
    vpc_make_footer(v, cr, size, force, c, h, s);

    if (dynamic) {
        /* Any sector-aligned write works; 4 KiB pieces let the convert
         * pipeline skip zero runs inside a 2 MiB block as qemu does
         * (its min_sparse), so the same parts of the file are holes. */
        v->w.granularity = 4096;
        v->n_bat = (uint32_t)((sectors + VPC_BLOCK_SIZE / 512 - 1) /
                              (VPC_BLOCK_SIZE / 512));
        rc = vpc_create_dynamic(v);
    } else {
        v->w.granularity = 512;
        v->fixed_size = size;
        rc = ins_grow_empty(out, size + 512);
        if (rc == 0)
            rc = ins_write(out, v->footer, 512, size);
        if (rc)
            rc = ins_error(ctx, rc, "Unable to write VHD header: %s",
                           ins_strerror(rc));
    }
    if (rc) {
        ins_free(ctx, v->bat);
        ins_free(ctx, v);
        return rc;
    }
    *img = &v->w;
    return INS_OK;
}

/* Appends block idx where the footer is, as qemu's alloc_block(). */
static int vpc_alloc(struct vpc_w *v, uint32_t idx)
{
    struct ins_bdev *out = v->w.out;
    uint8_t bitmap[VPC_BITMAP_SIZE], be[4];
    int rc;

    v->bat[idx] = (uint32_t)(v->free_off / 512);
    memset(bitmap, 0xff, sizeof(bitmap));
    rc = ins_write(out, bitmap, sizeof(bitmap), v->free_off);
    if (rc)
        return rc;
    v->free_off += VPC_BITMAP_SIZE + VPC_BLOCK_SIZE;
    rc = ins_write(out, v->footer, 512, v->free_off);
    if (rc)
        return rc;
    w_be32(be, v->bat[idx]);
    return ins_write(out, be, 4, VPC_BAT_OFFSET + (uint64_t)idx * 4);
}

static int vpc_write(struct ins_wimage *w, const void *buf, size_t len,
                     uint64_t offset)
{
    struct vpc_w *v = (struct vpc_w *)w;
    const uint8_t *p = buf;
    int rc;

    if (offset > w->virtual_size || len > w->virtual_size - offset)
        return ins_error(w->ctx, INS_EINVAL, "write beyond the end of the image");
    if (!v->dynamic)
        return ins_write(w->out, buf, len, offset);

    while (len > 0) {
        uint32_t idx = (uint32_t)(offset / VPC_BLOCK_SIZE);
        uint64_t in = offset % VPC_BLOCK_SIZE;
        size_t n = len;

        if (n > VPC_BLOCK_SIZE - in)
            n = (size_t)(VPC_BLOCK_SIZE - in);
        if (idx >= v->n_bat)
            return ins_error(w->ctx, INS_EINVAL, "write beyond the BAT");
        if (v->bat[idx] == UINT32_MAX) {
            rc = vpc_alloc(v, idx);
            if (rc)
                return rc;
        }
        rc = ins_write(w->out, p, n,
                       (uint64_t)v->bat[idx] * 512 + VPC_BITMAP_SIZE + in);
        if (rc)
            return rc;
        p += n;
        offset += n;
        len -= n;
    }
    return INS_OK;
}

static int vpc_finish(struct ins_wimage *w)
{
    return ins_flush(w->out);
}

static void vpc_close(struct ins_wimage *w)
{
    struct vpc_w *v = (struct vpc_w *)w;

    if (!v)
        return;
    ins_free(w->ctx, v->bat);
    ins_free(w->ctx, v);
}

const struct ins_writer ins_wr_vpc = {
    .name = "vpc",
    .create = vpc_create,
    .write = vpc_write,
    .finish = vpc_finish,
    .close = vpc_close,
};

/*
 * vhdx_write.c - writing VHDX images, dynamic and fixed.
 *
 * qemu's layout (block/vhdx.c vhdx_co_create and its write path):
 *
 *   0        file identifier "vhdxfile" and the creator "QEMU vX.Y.Z"
 *   64 KiB   header 1, 128 KiB header 2 (CRC-32C over 4 KiB)
 *   192 KiB  region table, 256 KiB its copy (BAT and metadata regions)
 *   1 MiB    the log (log_size bytes, 1 MiB by default)
 *   then     the BAT (rounded up to 1 MiB), the metadata region (1 MiB:
 *            a 64 KiB table, then file parameters, virtual size, page 83
 *            id, logical and physical sector size), 5 MiB of slack, and
 *            the payload blocks.
 *
 * block_state_zero (on by default) stores every block as ZERO and writes
 * the whole BAT at create; fixed images preallocate their blocks (but
 * with block_state_zero=on, as in qemu, they are still ZERO and writes
 * append new blocks).  A new block goes at the end of the file rounded up
 * to 1 MiB, the file grows by one block, and the data lands in it.
 *
 * Divergence: qemu journals every BAT update through the log; a new image
 * has nothing to protect, so we write BAT entries in place (after the
 * data, before the final flush) and leave the log empty.  The file differs
 * from qemu's only in the log region, which qemu-img counts in the disk
 * size (8 KiB per block allocation, at most the log's size).
 */
#include "vhdx_crc.h"
#include "wutil.h"

#define MiB                 (1024ull * 1024)
#define VHDX_MAX_SIZE       (64ull << 40)
#define VHDX_BLOCK_MAX      (256 * MiB)
#define VHDX_DEFAULT_LOG    MiB
#define VHDX_HEADER_END     MiB
#define VHDX_TABLE_SIZE     65536u

enum { BLOCK_NOT_PRESENT = 0, BLOCK_ZERO = 2, BLOCK_FULLY_PRESENT = 6 };

#define GUID(d1, d2, d3, a, b, c, d, e, f, g, h) {                     \
    (d1) & 0xff, ((d1) >> 8) & 0xff, ((d1) >> 16) & 0xff, (d1) >> 24,   \
    (d2) & 0xff, (d2) >> 8, (d3) & 0xff, (d3) >> 8, a, b, c, d, e, f, g, h }

static const uint8_t bat_guid[16] =
    GUID(0x2dc27766u, 0xf623, 0x4200, 0x9d, 0x64, 0x11, 0x5e, 0x9b, 0xfd, 0x4a, 0x08);
static const uint8_t metadata_guid[16] =
    GUID(0x8b7ca206u, 0x4790, 0x4b9a, 0xb8, 0xfe, 0x57, 0x5f, 0x05, 0x0f, 0x88, 0x6e);
static const uint8_t meta_guids[5][16] = {
    GUID(0xcaa16737u, 0xfa36, 0x4d43, 0xb3, 0xb6, 0x33, 0xf0, 0xaa, 0x44, 0xe7, 0x6b),
    GUID(0x2fa54224u, 0xcd1b, 0x4876, 0xb2, 0x11, 0x5d, 0xbe, 0xd8, 0x3b, 0xf4, 0xb8),
    GUID(0xbeca12abu, 0xb2e6, 0x4523, 0x93, 0xef, 0xc3, 0x09, 0xe0, 0x00, 0xc7, 0x46),
    GUID(0x8141bf1du, 0xa96f, 0x4709, 0xba, 0x47, 0xf2, 0x33, 0xa8, 0xfa, 0xab, 0x5f),
    GUID(0xcda348c7u, 0x445d, 0x4471, 0x9c, 0xc9, 0xe9, 0x88, 0x52, 0x51, 0xc5, 0x56),
};

struct vhdx_w {
    struct ins_wimage w;
    uint64_t block_size;
    uint64_t chunk_ratio;       /* payload blocks per sector bitmap block */
    uint64_t bat_off, bat_len, bat_entries;
    uint64_t *bat;              /* host order: offset | state */
    uint64_t file_len;          /* where the next block goes (rounded up) */
};

/* The qemu-img whose creator string goes into the file identifier. */
static const char *creator(const struct ins_ctx *ctx)
{
    unsigned v = INS_QEMU_VERSION(ctx);

    return v && v < 800 ? "QEMU v7.2.22" : "QEMU v10.0.13";
}

static int put_header(struct vhdx_w *v, uint64_t off, uint64_t seq,
                      const uint8_t *file_guid, const uint8_t *data_guid,
                      uint32_t log_size)
{
    uint8_t h[4096];

    memset(h, 0, sizeof(h));
    memcpy(h, "head", 4);
    w_le64(h + 8, seq);
    memcpy(h + 16, file_guid, 16);
    memcpy(h + 32, data_guid, 16);
    /* log GUID (48) stays zero: nothing to replay */
    w_le16(h + 64, 0);                  /* log version */
    w_le16(h + 66, 1);                  /* version */
    w_le32(h + 68, log_size);
    w_le64(h + 72, VHDX_HEADER_END);
    w_le32(h + 4, ins_vhdx_checksum(h, sizeof(h)));
    return ins_write(v->w.out, h, sizeof(h), off);
}

static int put_region_tables(struct vhdx_w *v, uint64_t meta_off)
{
    uint8_t *t = ins_calloc(v->w.ctx, 1, VHDX_TABLE_SIZE);
    int rc;

    if (!t)
        return INS_ENOMEM;
    memcpy(t, "regi", 4);
    w_le32(t + 8, 2);
    memcpy(t + 16, bat_guid, 16);
    w_le64(t + 32, v->bat_off);
    w_le32(t + 40, (uint32_t)v->bat_len);
    memcpy(t + 48, metadata_guid, 16);
    w_le64(t + 64, meta_off);
    w_le32(t + 72, (uint32_t)MiB);
    w_le32(t + 4, ins_vhdx_checksum(t, VHDX_TABLE_SIZE));
    rc = ins_write(v->w.out, t, VHDX_TABLE_SIZE, 192 * 1024);
    if (rc == 0)
        rc = ins_write(v->w.out, t, VHDX_TABLE_SIZE, 256 * 1024);
    ins_free(v->w.ctx, t);
    return rc;
}

static int put_metadata(struct vhdx_w *v, uint64_t meta_off, int fixed,
                        const uint8_t *rnd)
{
    static const uint32_t len[5] = { 8, 8, 16, 4, 4 };
    uint8_t *t = ins_calloc(v->w.ctx, 1, VHDX_TABLE_SIZE);
    uint8_t items[40], u[16];
    uint32_t off = VHDX_TABLE_SIZE;
    int rc;

    if (!t)
        return INS_ENOMEM;
    memcpy(t, "metadata", 8);
    w_le16(t + 10, 5);
    for (int i = 0; i < 5; i++) {
        uint8_t *e = t + 32 + 32 * i;

        memcpy(e, meta_guids[i], 16);
        w_le32(e + 16, off);
        w_le32(e + 20, len[i]);
        /* required; all but the file parameters describe the disk */
        w_le32(e + 24, i == 0 ? 0x04 : 0x06);
        off += len[i];
    }
    memset(items, 0, sizeof(items));
    w_le32(items, (uint32_t)v->block_size);
    w_le32(items + 4, fixed ? 1 : 0);   /* leave blocks allocated */
    w_le64(items + 8, v->w.virtual_size);
    /* page 83 id: a random GUID, stored with its fields little-endian */
    w_uuid(u, rnd);
    items[16] = u[3]; items[17] = u[2]; items[18] = u[1]; items[19] = u[0];
    items[20] = u[5]; items[21] = u[4]; items[22] = u[7]; items[23] = u[6];
    memcpy(items + 24, u + 8, 8);
    w_le32(items + 32, 512);
    w_le32(items + 36, 512);
    rc = ins_write(v->w.out, t, VHDX_TABLE_SIZE, meta_off);
    if (rc == 0)
        rc = ins_write(v->w.out, items, sizeof(items), meta_off + VHDX_TABLE_SIZE);
    ins_free(v->w.ctx, t);
    return rc;
}

/* The BAT index of payload block b (a sector bitmap entry follows every
 * chunk_ratio payload entries). */
static uint64_t bat_index(const struct vhdx_w *v, uint64_t b)
{
    return b + b / v->chunk_ratio;
}

/* qemu's option handling: rounding in vhdx_co_create_opts, then the
 * checks of vhdx_co_create in its order. */
static int vhdx_params(struct ins_ctx *ctx, const struct ins_create *cr,
                       uint64_t *size, uint64_t *log_size, uint64_t *block,
                       int *fixed, int *zero_blocks)
{
    const char *sub = wopt_str(cr->opts, "subformat");

    if (sub && strcmp(sub, "dynamic") != 0 && strcmp(sub, "fixed") != 0)
        return ins_error(ctx, INS_EINVAL,
                         "Parameter 'subformat' does not accept value '%s'",
                         sub);
    if (cr->size > UINT64_MAX - 511)
        return ins_error(ctx, INS_EINVAL, "Image size too large; max of 64TB");
    *size = (cr->size + 511) & ~511ull;
    *log_size = VHDX_DEFAULT_LOG;
    if (wopt_has(cr->opts, "log_size")) {
        uint64_t l = wopt_uint(cr->opts, "log_size", 0);

        *log_size = l > UINT64_MAX - MiB ? l : (l + MiB - 1) / MiB * MiB;
    }
    *block = 0;
    if (wopt_has(cr->opts, "block_size")) {
        uint64_t b = wopt_uint(cr->opts, "block_size", 0);

        *block = b > UINT64_MAX - MiB ? VHDX_BLOCK_MAX
                                      : (b + MiB - 1) / MiB * MiB;
        if (*block > VHDX_BLOCK_MAX)
            *block = VHDX_BLOCK_MAX;
    }
    if (*size > VHDX_MAX_SIZE)
        return ins_error(ctx, INS_EINVAL, "Image size too large; max of 64TB");
    if (*log_size > UINT32_MAX)
        return ins_error(ctx, INS_EINVAL, "Log size must be smaller than 4 GB");
    if (*log_size < MiB || *log_size % MiB)
        return ins_error(ctx, INS_EINVAL, "Log size must be a multiple of 1 MB");
    *zero_blocks = wopt_bool(cr->opts, "block_state_zero", 1);
    *fixed = sub && strcmp(sub, "fixed") == 0;
    if (!*block) {
        if (*size > (32ull << 40))
            *block = 64 * MiB;
        else if (*size > (100ull << 30))
            *block = 32 * MiB;
        else if (*size > (1ull << 30))
            *block = 16 * MiB;
        else
            *block = 8 * MiB;
    }
    if (*block & (*block - 1))
        return ins_error(ctx, INS_EINVAL, "Block size must be a power of two");
    return INS_OK;
}

static int vhdx_create(struct ins_ctx *ctx, struct ins_bdev *out,
                       const struct ins_create *cr, struct ins_wimage **img)
{
    struct vhdx_w *v;
    uint64_t size = 0, log_size = 0, block = 0, blocks, meta_off, data_off, seq;
    int fixed = 0, zero_blocks = 0, rc;
    uint8_t id[512];
    const char *cs;

    /* qemu creates the file before it checks the vhdx options. */
    rc = w_check_file_prealloc(ctx, cr->opts);
    if (rc)
        return rc;
    rc = vhdx_params(ctx, cr, &size, &log_size, &block, &fixed, &zero_blocks);
    if (rc)
        return rc;
    v = ins_calloc(ctx, 1, sizeof(*v));
    if (!v)
        return ins_error(ctx, INS_ENOMEM, "Cannot allocate memory");
    v->w.wr = &ins_wr_vhdx;
    v->w.ctx = ctx;
    v->w.out = out;
    v->w.virtual_size = size;
    /* Any sector-aligned write works; 4 KiB pieces let the convert
     * pipeline skip zero runs inside a block as qemu does. */
    v->w.granularity = 4096;
    v->w.zero_init = 1;
    v->block_size = block;
    v->chunk_ratio = (1ull << 23) * 512 / block;
    blocks = (size + block - 1) / block;
    v->bat_entries = blocks ? blocks + (blocks - 1) / v->chunk_ratio : 0;
    v->bat_len = (v->bat_entries * 8 + MiB - 1) / MiB * MiB;
    v->bat_off = (VHDX_HEADER_END + log_size + MiB - 1) / MiB * MiB;
    meta_off = (v->bat_off + v->bat_len + MiB - 1) / MiB * MiB;
    data_off = v->bat_off + v->bat_len + 5 * MiB;
    /* The BAT stays in memory: 16Mi entries (128 MiB) at most, which
     * the default block sizes never reach (64 TiB takes 1Mi); tiny blocks
     * on a huge disk would need more than the worker may use. */
    if (v->bat_entries > (16u << 20)) {
        ins_free(ctx, v);
        return ins_error(ctx, INS_ENOMEM, "Failed to allocate memory for "
                         "the BAT");
    }
    v->bat = ins_calloc(ctx, v->bat_entries ? v->bat_entries : 1, 8);
    if (!v->bat) {
        ins_free(ctx, v);
        return ins_error(ctx, INS_ENOMEM, "Failed to allocate memory for "
                         "the BAT");
    }

    /* (A) file identifier with the creator in UTF-16LE */
    memset(id, 0, sizeof(id));
    memcpy(id, "vhdxfile", 8);
    cs = creator(ctx);
    for (size_t i = 0; cs[i]; i++)
        id[8 + 2 * i] = (uint8_t)cs[i];
    rc = ins_write(out, id, 8 + 2 * strlen(cs), 0);
    if (rc) {
        rc = ins_error(ctx, rc, "Failed to write file signature: %s",
                       ins_strerror(rc));
        goto fail;
    }
    /* (B), (C) headers: the current one has the higher sequence number */
    seq = ins_le64(cr->random + 16) >> 1;
    rc = put_header(v, 64 * 1024, seq, cr->random + 32, cr->random + 48,
                    (uint32_t)log_size);
    if (rc == 0)
        rc = put_header(v, 128 * 1024, seq + 1, cr->random + 32,
                        cr->random + 48, (uint32_t)log_size);
    if (rc) {
        rc = ins_error(ctx, rc, "Failed to write image headers: %s",
                       ins_strerror(rc));
        goto fail;
    }

    /* (G) the BAT, then (D), (E) region tables */
    v->file_len = data_off + (fixed ? size : 0);
    rc = ins_truncate(out, v->file_len);
    if (rc) {
        rc = ins_error(ctx, rc, "%s", ins_strerror(rc));
        goto fail;
    }
    if (fixed || zero_blocks) {
        /* Written whole, in 1 MiB pieces (the BAT region is MiB-sized). */
        uint8_t *buf = ins_malloc(ctx, (size_t)MiB);

        if (!buf) {
            rc = ins_error(ctx, INS_ENOMEM, "Failed to allocate memory for "
                           "the BAT");
            goto fail;
        }
        for (uint64_t b = 0; b < blocks; b++)
            v->bat[bat_index(v, b)] = zero_blocks ? BLOCK_ZERO :
                (data_off + b * block) | BLOCK_FULLY_PRESENT;
        for (uint64_t at = 0; rc == 0 && at < v->bat_len; at += MiB) {
            memset(buf, 0, (size_t)MiB);
            for (uint64_t k = 0; k < MiB / 8 && at / 8 + k < v->bat_entries; k++)
                w_le64(buf + 8 * k, v->bat[at / 8 + k]);
            rc = ins_write(out, buf, (size_t)MiB, v->bat_off + at);
        }
        ins_free(ctx, buf);
        if (rc) {
            rc = ins_error(ctx, rc, "Failed to write the BAT: %s",
                           ins_strerror(rc));
            goto fail;
        }
    }
    rc = put_region_tables(v, meta_off);
    if (rc) {
        rc = ins_error(ctx, rc, "Failed to write first region table: %s",
                       ins_strerror(rc));
        goto fail;
    }
    /* (H) metadata */
    rc = put_metadata(v, meta_off, fixed, cr->random + 64);
    if (rc) {
        rc = ins_error(ctx, rc, "Failed to initialize metadata: %s",
                       ins_strerror(rc));
        goto fail;
    }
    *img = &v->w;
    return INS_OK;
fail:
    ins_free(ctx, v->bat);
    ins_free(ctx, v);
    return rc;
}

static int vhdx_write(struct ins_wimage *w, const void *buf, size_t len,
                      uint64_t offset)
{
    struct vhdx_w *v = (struct vhdx_w *)w;
    const uint8_t *p = buf;
    int rc;

    if (offset > w->virtual_size || len > w->virtual_size - offset)
        return ins_error(w->ctx, INS_EINVAL, "write beyond the end of the image");
    while (len > 0) {
        uint64_t b = offset / v->block_size, in = offset % v->block_size;
        uint64_t idx = bat_index(v, b);
        size_t n = len < v->block_size - in ? len : (size_t)(v->block_size - in);
        uint64_t e = v->bat[idx];

        if ((e & 7) != BLOCK_FULLY_PRESENT) {
            /* A new block at the end of the file, on a 1 MiB boundary. */
            uint64_t at = (v->file_len + MiB - 1) / MiB * MiB;
            uint8_t le[8];

            rc = ins_truncate(w->out, at + v->block_size);
            if (rc)
                return rc;
            v->file_len = at + v->block_size;
            rc = ins_write(w->out, p, n, at + in);
            if (rc)
                return rc;
            e = at | BLOCK_FULLY_PRESENT;
            v->bat[idx] = e;
            w_le64(le, e);
            rc = ins_write(w->out, le, sizeof(le), v->bat_off + idx * 8);
        } else {
            rc = ins_write(w->out, p, n, (e & ~(MiB - 1)) + in);
        }
        if (rc)
            return rc;
        p += n;
        offset += n;
        len -= n;
    }
    return INS_OK;
}

static int vhdx_finish(struct ins_wimage *w)
{
    return ins_flush(w->out);
}

static void vhdx_close(struct ins_wimage *w)
{
    struct vhdx_w *v = (struct vhdx_w *)w;

    if (!v)
        return;
    ins_free(w->ctx, v->bat);
    ins_free(w->ctx, v);
}

const struct ins_writer ins_wr_vhdx = {
    .name = "vhdx",
    .create = vhdx_create,
    .write = vhdx_write,
    .finish = vhdx_finish,
    .close = vhdx_close,
};

/*
 * vdi_write.c - writing VirtualBox VDI images, dynamic and static.
 *
 * qemu's layout (block/vdi.c): a 512-byte header, the block map at 0x200
 * (rounded up to a sector), then 1 MiB blocks.  A dynamic image starts
 * with every map entry unallocated and appends blocks in the order they
 * are first written, each written whole (zero-padded); the header's
 * allocated-block count and the touched map sector follow.  A static
 * image (static=on) maps block i to slot i and is truncated to its full
 * size up front.
 */
#include "wutil.h"

#define VDI_BLOCK_SIZE      1048576u
#define VDI_SIGNATURE       0xbeda107fu
#define VDI_VERSION_1_1     0x00010001u
#define VDI_TYPE_DYNAMIC    1
#define VDI_TYPE_STATIC     2
#define VDI_UNALLOCATED     0xffffffffu
#define VDI_TEXT            "<<< QEMU VM Virtual Disk Image >>>\n"
/* Keeps the map's byte size plus a sector within INT_MAX (qemu's limit). */
#define VDI_BLOCKS_MAX      ((0x80000000u - 512u) / 4u)
#define VDI_DISK_SIZE_MAX   ((uint64_t)VDI_BLOCKS_MAX * VDI_BLOCK_SIZE)

struct vdi_w {
    struct ins_wimage w;
    uint8_t header[512];
    uint32_t *bmap;             /* host order */
    uint32_t blocks;
    uint32_t allocated;
    uint64_t offset_data;
    int is_static;
    uint8_t *block;             /* one zero-padded block being allocated */
};

/* qemu keeps UUIDs big-endian in memory and byte-swaps their first three
 * fields when storing a VDI header. */
static void vdi_uuid(uint8_t *out, const uint8_t *rnd)
{
    uint8_t u[16];

    w_uuid(u, rnd);
    out[0] = u[3]; out[1] = u[2]; out[2] = u[1]; out[3] = u[0];
    out[4] = u[5]; out[5] = u[4];
    out[6] = u[7]; out[7] = u[6];
    memcpy(out + 8, u + 8, 8);
}

static int vdi_put_header(struct vdi_w *v)
{
    w_le32(v->header + 0x184, v->allocated);
    return ins_write(v->w.out, v->header, sizeof(v->header), 0);
}

/* Writes the map sector holding entry idx. */
static int vdi_put_map_sector(struct vdi_w *v, uint32_t idx)
{
    uint8_t sec[512];
    uint32_t first = idx / 128 * 128;

    memset(sec, 0, sizeof(sec));
    for (uint32_t i = 0; i < 128 && first + i < v->blocks; i++)
        w_le32(sec + 4 * i, v->bmap[first + i]);
    return ins_write(v->w.out, sec, sizeof(sec), 0x200 + (uint64_t)first * 4);
}

static int vdi_create(struct ins_ctx *ctx, struct ins_bdev *out,
                      const struct ins_create *cr, struct ins_wimage **img)
{
    struct vdi_w *v;
    uint64_t size, bmap_size;
    uint8_t *map;
    int rc;

    int prc = w_check_file_prealloc(ctx, cr->opts);

    if (prc)
        return prc;
    if (cr->size > UINT64_MAX - 511)
        return ins_error(ctx, INS_ENOTSUP,
                         "Unsupported VDI image size (size is 0x%llx, max "
                         "supported is 0x%llx)", (unsigned long long)cr->size,
                         (unsigned long long)VDI_DISK_SIZE_MAX);
    size = (cr->size + 511) & ~511ull;
    if (size > VDI_DISK_SIZE_MAX)
        return ins_error(ctx, INS_ENOTSUP,
                         "Unsupported VDI image size (size is 0x%llx, max "
                         "supported is 0x%llx)", (unsigned long long)size,
                         (unsigned long long)VDI_DISK_SIZE_MAX);

    v = ins_calloc(ctx, 1, sizeof(*v));
    if (!v)
        return ins_error(ctx, INS_ENOMEM, "Cannot allocate memory");
    v->w.wr = &ins_wr_vdi;
    v->w.ctx = ctx;
    v->w.out = out;
    v->w.virtual_size = size;
    /* Any sector-aligned write works (a new block is written whole);
     * 4 KiB pieces let the convert pipeline skip zero runs as qemu does
     * in a static image. */
    v->w.granularity = 4096;
    v->w.zero_init = 1;
    v->is_static = wopt_bool(cr->opts, "static", 0);
    v->blocks = (uint32_t)((size + VDI_BLOCK_SIZE - 1) / VDI_BLOCK_SIZE);
    bmap_size = ((uint64_t)v->blocks * 4 + 511) & ~511ull;
    v->offset_data = 0x200 + bmap_size;
    /* The map stays in memory: 64Mi entries (256 MiB, a 64 TiB disk) at
     * most, within the worker's limit (qemu allows up to 512 TiB). */
    if (v->blocks > (64u << 20)) {
        ins_free(ctx, v);
        return ins_error(ctx, INS_ENOMEM, "Could not allocate bmap");
    }
    v->bmap = ins_calloc(ctx, v->blocks ? v->blocks : 1, 4);
    if (!v->bmap) {
        ins_free(ctx, v);
        return ins_error(ctx, INS_ENOMEM, "Could not allocate bmap");
    }
    for (uint32_t i = 0; i < v->blocks; i++)
        v->bmap[i] = v->is_static ? i : VDI_UNALLOCATED;
    if (v->is_static)
        v->allocated = v->blocks;

    memset(v->header, 0, sizeof(v->header));
    memcpy(v->header, VDI_TEXT, sizeof(VDI_TEXT) - 1);
    w_le32(v->header + 0x40, VDI_SIGNATURE);
    w_le32(v->header + 0x44, VDI_VERSION_1_1);
    w_le32(v->header + 0x48, 0x180);
    w_le32(v->header + 0x4c, v->is_static ? VDI_TYPE_STATIC : VDI_TYPE_DYNAMIC);
    w_le32(v->header + 0x154, 0x200);
    w_le32(v->header + 0x158, (uint32_t)v->offset_data);
    w_le32(v->header + 0x168, 512);
    w_le64(v->header + 0x170, size);
    w_le32(v->header + 0x178, VDI_BLOCK_SIZE);
    w_le32(v->header + 0x180, v->blocks);
    vdi_uuid(v->header + 0x188, cr->random);
    vdi_uuid(v->header + 0x198, cr->random + 16);

    rc = vdi_put_header(v);
    if (rc) {
        rc = ins_error(ctx, rc, "Error writing header");
        goto fail;
    }
    /* The map, in pieces of up to 1 MiB. */
    map = bmap_size ? ins_malloc(ctx, bmap_size < (1u << 20) ? (size_t)bmap_size
                                                             : 1u << 20)
                    : NULL;
    if (bmap_size && !map) {
        rc = ins_error(ctx, INS_ENOMEM, "Could not allocate bmap");
        goto fail;
    }
    for (uint64_t at = 0; at < bmap_size; at += 1u << 20) {
        size_t n = bmap_size - at < (1u << 20) ? (size_t)(bmap_size - at)
                                               : 1u << 20;

        memset(map, 0, n);
        for (size_t k = 0; k < n / 4 && at / 4 + k < v->blocks; k++)
            w_le32(map + 4 * k, v->bmap[at / 4 + k]);
        rc = ins_write(out, map, n, 0x200 + at);
        if (rc) {
            ins_free(ctx, map);
            rc = ins_error(ctx, rc, "Error writing bmap");
            goto fail;
        }
    }
    ins_free(ctx, map);
    if (v->is_static) {
        rc = ins_truncate(out, v->offset_data +
                               (uint64_t)v->blocks * VDI_BLOCK_SIZE);
        if (rc) {
            rc = ins_error(ctx, rc, "Failed to statically allocate file: %s",
                           ins_strerror(rc));
            goto fail;
        }
    }
    *img = &v->w;
    return INS_OK;
fail:
    ins_free(ctx, v->bmap);
    ins_free(ctx, v);
    return rc;
}

static int vdi_write(struct ins_wimage *w, const void *buf, size_t len,
                     uint64_t offset)
{
    struct vdi_w *v = (struct vdi_w *)w;
    const uint8_t *p = buf;
    int rc;

    if (offset > w->virtual_size || len > w->virtual_size - offset)
        return ins_error(w->ctx, INS_EINVAL, "write beyond the end of the image");
    while (len > 0) {
        uint32_t idx = (uint32_t)(offset / VDI_BLOCK_SIZE);
        uint32_t in = (uint32_t)(offset % VDI_BLOCK_SIZE);
        size_t n = len < VDI_BLOCK_SIZE - in ? len : VDI_BLOCK_SIZE - in;

        if (v->bmap[idx] == VDI_UNALLOCATED) {
            /* A new block goes at the end, written whole. */
            if (!v->block) {
                v->block = ins_malloc(w->ctx, VDI_BLOCK_SIZE);
                if (!v->block)
                    return ins_error(w->ctx, INS_ENOMEM,
                                     "Cannot allocate memory");
            }
            memset(v->block, 0, VDI_BLOCK_SIZE);
            memcpy(v->block + in, p, n);
            v->bmap[idx] = v->allocated++;
            rc = ins_write(w->out, v->block, VDI_BLOCK_SIZE,
                           v->offset_data +
                           (uint64_t)v->bmap[idx] * VDI_BLOCK_SIZE);
            if (rc == 0)
                rc = vdi_put_header(v);
            if (rc == 0)
                rc = vdi_put_map_sector(v, idx);
        } else {
            rc = ins_write(w->out, p, n, v->offset_data +
                           (uint64_t)v->bmap[idx] * VDI_BLOCK_SIZE + in);
        }
        if (rc)
            return rc;
        p += n;
        offset += n;
        len -= n;
    }
    return INS_OK;
}

static int vdi_finish(struct ins_wimage *w)
{
    return ins_flush(w->out);
}

static void vdi_close(struct ins_wimage *w)
{
    struct vdi_w *v = (struct vdi_w *)w;

    if (!v)
        return;
    ins_free(w->ctx, v->block);
    ins_free(w->ctx, v->bmap);
    ins_free(w->ctx, v);
}

const struct ins_writer ins_wr_vdi = {
    .name = "vdi",
    .create = vdi_create,
    .write = vdi_write,
    .finish = vdi_finish,
    .close = vdi_close,
};

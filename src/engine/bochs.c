/*
 * bochs.c - Bochs "growing" redolog disk images (read-only in qemu too).
 *
 * A 512-byte little-endian header, a catalog of extent numbers, then
 * extents, each a bitmap of present sectors followed by the sectors.
 * qemu caps the catalog at 1M entries and the extent size at 8 MiB, and
 * requires the catalog to cover the disk.
 */
#include "engine.h"

#include <string.h>

#define BOCHS_HEADER_SIZE   512
#define BOCHS_VERSION       0x00020000u
#define BOCHS_V1            0x00010000u
#define BOCHS_MAX_CATALOG   0x100000u
#define BOCHS_MAX_EXTENT    0x800000u
#define BOCHS_SECTOR        512u
#define BOCHS_UNALLOCATED   0xffffffffu

/* The block layer's request limit on offsets (see qcow.c). */
#define BDRV_MAX_LENGTH     ((uint64_t)INT64_MAX - ((1ull << 30) - 1))

struct bochs_image {
    struct ins_image base;
    uint32_t catalog_size;
    uint32_t *catalog;
    uint32_t data_offset;
    uint32_t bitmap_blocks;
    uint32_t extent_blocks;
    uint32_t extent_size;
};

/*
 * qemu compares the magic, type and subtype with strcmp(): each field
 * must hold exactly the string and its terminating NUL.
 */
static int bochs_header_ok(const uint8_t *h)
{
    uint32_t version = ins_le32(h + 64);

    return memcmp(h, "Bochs Virtual HD Image", 23) == 0 &&
           memcmp(h + 32, "Redolog", 8) == 0 &&
           memcmp(h + 48, "Growing", 8) == 0 &&
           (version == BOCHS_VERSION || version == BOCHS_V1);
}

static int bochs_probe(struct ins_ctx *ctx, struct ins_bdev *file,
                       const uint8_t *head, size_t head_len)
{
    uint8_t h[BOCHS_HEADER_SIZE];

    (void)ctx; (void)file;
    /* qemu probes 2048 bytes padded with zeros past end of file (an
     * empty file is raw before any probe). */
    if (head_len == 0)
        return 0;
    memset(h, 0, sizeof(h));
    memcpy(h, head, head_len < sizeof(h) ? head_len : sizeof(h));
    return bochs_header_ok(h) ? 100 : 0;
}

static void bochs_close(struct ins_image *img)
{
    struct bochs_image *bi = (struct bochs_image *)img;

    if (!bi)
        return;
    ins_free(img->ctx, bi->catalog);
    ins_free(img->ctx, bi);
}

static int bochs_open(struct ins_ctx *ctx, struct ins_bdev *file,
                      unsigned flags, struct ins_image **out)
{
    uint8_t h[BOCHS_HEADER_SIZE];
    struct bochs_image *bi;
    uint64_t total_sectors, sectors_per_extent, needed;
    uint32_t header_off, i;
    int rc;

    (void)flags;
    /* Past end of file the block layer reads zeros. */
    if (ins_read_zfill(file, h, sizeof(h), 0) < 0)
        return ins_error(ctx, INS_EIO, "Could not read Bochs header");
    if (!bochs_header_ok(h))
        return ins_error(ctx, INS_EINVAL, "Image not in Bochs format");
    bi = ins_calloc(ctx, 1, sizeof(*bi));
    if (!bi)
        return ins_error(ctx, INS_ENOMEM, "Out of memory");
    bi->base.drv = &ins_drv_bochs;
    bi->base.ctx = ctx;
    bi->base.file = file;
    /* Version 1 has no reserved word before the disk size. */
    total_sectors = ins_le64(h + (ins_le32(h + 64) == BOCHS_V1 ? 84 : 88)) / 512;

    bi->catalog_size = ins_le32(h + 72);
    if (bi->catalog_size > BOCHS_MAX_CATALOG) {
        rc = ins_error(ctx, INS_EFBIG, "Catalog size is too large");
        goto fail;
    }
    bi->catalog = ins_calloc(ctx, bi->catalog_size ? bi->catalog_size : 1, 4);
    if (!bi->catalog) {
        rc = ins_error(ctx, INS_ENOMEM, "Could not allocate memory for catalog");
        goto fail;
    }
    header_off = ins_le32(h + 68);
    if (ins_read_zfill(file, bi->catalog, (size_t)bi->catalog_size * 4,
                       header_off) < 0) {
        rc = ins_error(ctx, INS_EIO, "Could not read Bochs catalog");
        goto fail;
    }
    for (i = 0; i < bi->catalog_size; i++)
        bi->catalog[i] = ins_le32((uint8_t *)&bi->catalog[i]);

    /* qemu's 32-bit arithmetic, wrapping included. */
    bi->data_offset = header_off + bi->catalog_size * 4;
    bi->bitmap_blocks = 1 + (ins_le32(h + 76) - 1) / 512;
    bi->extent_blocks = 1 + (ins_le32(h + 80) - 1) / 512;
    bi->extent_size = ins_le32(h + 80);
    if (bi->extent_size < BOCHS_SECTOR) {
        rc = ins_error(ctx, INS_EINVAL, "Extent size must be at least 512");
        goto fail;
    }
    if (bi->extent_size & (bi->extent_size - 1)) {
        rc = ins_error(ctx, INS_EINVAL, "Extent size %u is not a power of two",
                       bi->extent_size);
        goto fail;
    }
    if (bi->extent_size > BOCHS_MAX_EXTENT) {
        rc = ins_error(ctx, INS_EINVAL, "Extent size %u is too large",
                       bi->extent_size);
        goto fail;
    }
    sectors_per_extent = bi->extent_size / BOCHS_SECTOR;
    needed = total_sectors / sectors_per_extent +
             (total_sectors % sectors_per_extent != 0);
    if (bi->catalog_size < needed) {
        rc = ins_error(ctx, INS_EINVAL,
                       "Catalog size is too small for this disk size");
        goto fail;
    }
    bi->base.virtual_size = total_sectors * BOCHS_SECTOR;
    *out = &bi->base;
    return INS_OK;

fail:
    bochs_close(&bi->base);
    return rc;
}

static int bochs_info(struct ins_image *img, struct tree_builder *tb,
                      struct ins_info *info)
{
    (void)tb;
    /* No get_info in qemu's bochs driver: no cluster size, no dirty flag. */
    info->virtual_size = img->virtual_size;
    return INS_OK;
}

/* ---- reading ---- */

/*
 * seek_to_sector(): the file offset of guest sector `sector`, or 0 when
 * the extent is unallocated or the sector's bit is clear (zeros).
 */
static int bochs_sector(struct bochs_image *bi, uint64_t sector, uint64_t *where)
{
    uint64_t offset = sector * BOCHS_SECTOR;
    uint64_t index = offset / bi->extent_size;
    uint64_t in_extent = (offset % bi->extent_size) / BOCHS_SECTOR;
    uint64_t bitmap_offset, at;
    uint8_t bits;

    *where = 0;
    if (index >= bi->catalog_size || bi->catalog[index] == BOCHS_UNALLOCATED)
        return INS_OK;
    bitmap_offset = bi->data_offset + (uint64_t)BOCHS_SECTOR * bi->catalog[index] *
                    (uint32_t)(bi->extent_blocks + bi->bitmap_blocks);
    at = bitmap_offset + in_extent / 8;
    if (at > BDRV_MAX_LENGTH - 1)
        return ins_error(bi->base.ctx, INS_EIO, "Input/output error");
    if (ins_read_zfill(bi->base.file, &bits, 1, at) < 0)
        return ins_error(bi->base.ctx, INS_EIO, "Input/output error");
    if (!((bits >> (in_extent % 8)) & 1))
        return INS_OK;
    *where = bitmap_offset + (uint64_t)BOCHS_SECTOR * (bi->bitmap_blocks + in_extent);
    return INS_OK;
}

/* No block status in qemu's driver: everything is data. */
static int bochs_block_status(struct ins_image *img, uint64_t offset,
                              uint64_t bytes, struct ins_bstat *st)
{
    (void)img; (void)offset;
    st->pnum = bytes;
    return INS_BS_DATA;
}

static int bochs_read(struct ins_image *img, void *buf, size_t len,
                      uint64_t offset)
{
    struct bochs_image *bi = (struct bochs_image *)img;
    uint8_t *p = buf;

    while (len > 0) {
        uint64_t in_sector = offset % BOCHS_SECTOR, where;
        size_t n = BOCHS_SECTOR - in_sector < len ? (size_t)(BOCHS_SECTOR - in_sector) : len;
        int rc = bochs_sector(bi, offset / BOCHS_SECTOR, &where);

        if (rc < 0)
            return rc;
        if (where) {
            if (where + in_sector > BDRV_MAX_LENGTH - n)
                return ins_error(img->ctx, INS_EIO, "Input/output error");
            rc = ins_read_zfill(img->file, p, n, where + in_sector);
            if (rc < 0)
                return rc;
        } else {
            memset(p, 0, n);
        }
        p += n;
        offset += n;
        len -= n;
    }
    return INS_OK;
}

const struct ins_driver ins_drv_bochs = {
    .name = "bochs",
    .probe = bochs_probe,
    .open = bochs_open,
    .info = bochs_info,
    .close = bochs_close,
    .block_status = bochs_block_status,
    .read = bochs_read,
};

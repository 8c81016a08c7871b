/*
 * iso.c - ISO 9660 images, an instar-only format name.
 *
 * qemu-img has no ISO driver: it reads an ISO as raw, which hides what the
 * file is from policy decisions.  We recognise the primary volume
 * descriptor ("CD001" at byte 32769) with the lowest score, so any real
 * format wins; otherwise an ISO is exactly raw (virtual size rounded up
 * to a sector).  With INS_F_UNSAFE_QUIRKS detection skips this driver
 * (detect.c) and reports raw as qemu-img does; `-f iso` still works.
 */
#include "engine.h"

#include <string.h>

#define ISO_VD_OFFSET   32768u      /* sector 16 of 2048 bytes */
#define ISO_MAGIC       "CD001"

static int iso_probe(struct ins_ctx *ctx, struct ins_bdev *file,
                     const uint8_t *head, size_t head_len)
{
    uint8_t id[5];

    (void)ctx; (void)head; (void)head_len;
    if (ins_read(file, id, sizeof(id), ISO_VD_OFFSET + 1) != INS_OK)
        return 0;
    return memcmp(id, ISO_MAGIC, sizeof(id)) == 0 ? 1 : 0;
}

static int iso_open(struct ins_ctx *ctx, struct ins_bdev *file,
                    unsigned flags, struct ins_image **out)
{
    struct ins_image *img = ins_calloc(ctx, 1, sizeof(*img));

    (void)flags;
    if (!img)
        return ins_error(ctx, INS_ENOMEM, "Out of memory");
    img->drv = &ins_drv_iso;
    img->ctx = ctx;
    img->file = file;
    /* As raw: the file length rounded up to a whole sector. */
    img->virtual_size = file->size > UINT64_MAX - 511 ? file->size
                                                      : (file->size + 511) & ~(uint64_t)511;
    *out = img;
    return INS_OK;
}

static int iso_info(struct ins_image *img, struct tree_builder *tb,
                    struct ins_info *info)
{
    (void)tb;
    /* Everything as raw reports it, only the format name differs. */
    info->virtual_size = img->virtual_size;
    info->has_dirty_flag = 1;
    return INS_OK;
}

/* The file is the disk, as for raw. */
static int iso_block_status(struct ins_image *img, uint64_t offset,
                            uint64_t bytes, struct ins_bstat *st)
{
    st->pnum = bytes;
    st->map = offset;
    st->file = img->file;
    return INS_BS_RAW | INS_BS_OFFSET_VALID;
}

static int iso_read(struct ins_image *img, void *buf, size_t len,
                    uint64_t offset)
{
    return ins_read_zfill(img->file, buf, len, offset);
}

static void iso_close(struct ins_image *img)
{
    if (img)
        ins_free(img->ctx, img);
}

const struct ins_driver ins_drv_iso = {
    .name = "iso",
    .probe = iso_probe,
    .open = iso_open,
    .info = iso_info,
    .close = iso_close,
    .block_status = iso_block_status,
    .read = iso_read,
};

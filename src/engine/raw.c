/*
 * raw.c - the raw format: the file is the disk.
 *
 * Raw is never probed for: detection falls back to it (see detect.c).
 * Like qemu, the virtual size is the file length rounded up to a whole
 * 512-byte sector.
 */
#include "engine.h"

static int raw_open(struct ins_ctx *ctx, struct ins_bdev *file,
                    unsigned flags, struct ins_image **out)
{
    struct ins_image *img = ins_calloc(ctx, 1, sizeof(*img));

    (void)flags;
    if (!img)
        return ins_error(ctx, INS_ENOMEM, "Out of memory");
    img->drv = &ins_drv_raw;
    img->ctx = ctx;
    img->file = file;
    img->virtual_size = file->size > UINT64_MAX - 511 ? file->size
                                                      : (file->size + 511) & ~(uint64_t)511;
    *out = img;
    return INS_OK;
}

static int raw_info(struct ins_image *img, struct tree_builder *tb,
                    struct ins_info *info)
{
    (void)tb;
    info->virtual_size = img->virtual_size;
    info->has_dirty_flag = 1;
    return INS_OK;
}

/* Raw defers to the file: its holes read as zeros, and so does the tail
 * past end of file up to the sector-rounded size. */
static int raw_block_status(struct ins_image *img, uint64_t offset,
                            uint64_t bytes, struct ins_bstat *st)
{
    st->pnum = bytes;
    st->map = offset;
    st->file = img->file;
    return INS_BS_RAW | INS_BS_OFFSET_VALID;
}

static int raw_read(struct ins_image *img, void *buf, size_t len,
                    uint64_t offset)
{
    return ins_read_zfill(img->file, buf, len, offset);
}

static void raw_close(struct ins_image *img)
{
    if (img)
        ins_free(img->ctx, img);
}

const struct ins_driver ins_drv_raw = {
    .name = "raw",
    .probe = NULL,
    .open = raw_open,
    .info = raw_info,
    .close = raw_close,
    .block_status = raw_block_status,
    .read = raw_read,
    .plain_map = 1,
};

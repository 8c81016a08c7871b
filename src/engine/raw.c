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
    *out = img;
    return INS_OK;
}

static int raw_info(struct ins_image *img, struct tree_builder *tb,
                    struct ins_info *info)
{
    uint64_t size = img->file->size;

    (void)tb;
    info->virtual_size = size > UINT64_MAX - 511 ? size : (size + 511) & ~(uint64_t)511;
    info->has_dirty_flag = 1;
    return INS_OK;
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
};

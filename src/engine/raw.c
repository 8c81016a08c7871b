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

/* Holes in the file read as zeros; the tail past end of file (up to the
 * sector-rounded size) does too. */
static int raw_block_status(struct ins_image *img, uint64_t offset,
                            uint64_t max_len, struct ins_extent *ext)
{
    struct ins_bdev *f = img->file;
    uint64_t end = offset + max_len, next;
    int rc;

    ext->host = f;
    ext->host_offset = offset;
    if (offset >= f->size) {
        ext->length = max_len;
        ext->flags = INS_BS_ZERO | INS_BS_ALLOCATED | INS_BS_OFFSET;
        return INS_OK;
    }
    if (end > f->size)
        end = f->size;
    if (!f->seek) {
        ext->length = end - offset;
        ext->flags = INS_BS_DATA | INS_BS_ALLOCATED | INS_BS_OFFSET;
        return INS_OK;
    }
    rc = f->seek(f->opaque, offset, 0, &next);
    if (rc == INS_ENOENT)
        next = f->size;
    else if (rc < 0)
        return rc;
    if (next > offset) {
        /* A hole up to the next data. */
        ext->length = (next < end ? next : end) - offset;
        ext->flags = INS_BS_ZERO | INS_BS_ALLOCATED | INS_BS_OFFSET;
        return INS_OK;
    }
    rc = f->seek(f->opaque, offset, 1, &next);
    if (rc < 0 || next <= offset)
        next = f->size;
    ext->length = (next < end ? next : end) - offset;
    ext->flags = INS_BS_DATA | INS_BS_ALLOCATED | INS_BS_OFFSET;
    return INS_OK;
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
};

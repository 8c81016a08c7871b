/*
 * raw_write.c - writing raw images.
 *
 * A new raw image is the file truncated to the virtual size: a sparse
 * file that reads as zeros (but for its first block, see ins_grow_empty),
 * as qemu's raw_co_create() leaves it, so the
 * convert pipeline skips zeros and holes stay holes.  Explicit zeros
 * (convert -n into a file that may hold data) are punched where the file
 * system can, written otherwise.
 */
#include "writer.h"

struct raw_wimage {
    struct ins_wimage w;
};

static int raw_make(struct ins_ctx *ctx, struct ins_bdev *out, uint64_t size,
                    int zero_init, struct ins_wimage **img)
{
    struct raw_wimage *r = ins_calloc(ctx, 1, sizeof(*r));

    if (!r)
        return ins_error(ctx, INS_ENOMEM, "Out of memory");
    r->w.wr = &ins_wr_raw;
    r->w.ctx = ctx;
    r->w.out = out;
    r->w.virtual_size = size;
    r->w.granularity = 512;
    r->w.zero_init = zero_init;
    *img = &r->w;
    return INS_OK;
}

static int raw_create(struct ins_ctx *ctx, struct ins_bdev *out,
                      const struct ins_create *cr, struct ins_wimage **img)
{
    int rc;

    if (cr->backing_file)
        return ins_error(ctx, INS_ENOTSUP, "Backing file not supported for file format 'raw'");
    /* raw_co_create(): truncate to the size (preallocation=off), which
     * allocates the first block.  The host hands over an empty file;
     * emptying one again would make ext4 flush it on close (its
     * auto_da_alloc heuristic). */
    rc = out->size ? ins_truncate(out, 0) : INS_OK;
    if (rc == 0)
        rc = ins_grow_empty(out, cr->size);
    if (rc < 0)
        return ins_error(ctx, rc, "Could not resize file: %s", ins_strerror(rc));
    return raw_make(ctx, out, cr->size, 1, img);
}

/* convert -n: an existing file of any content; its length is the size. */
static int raw_open(struct ins_ctx *ctx, struct ins_bdev *out,
                    struct ins_wimage **img)
{
    return raw_make(ctx, out, out->size, 0, img);
}

static int raw_write(struct ins_wimage *img, const void *buf, size_t len,
                     uint64_t offset)
{
    return ins_write(img->out, buf, len, offset);
}

static int raw_write_zeroes(struct ins_wimage *img, uint64_t offset,
                            uint64_t len)
{
    return ins_zero_range(img->out, offset, len);
}

static int raw_finish(struct ins_wimage *img)
{
    return ins_flush(img->out);
}

static void raw_close(struct ins_wimage *img)
{
    ins_free(img->ctx, img);
}

const struct ins_writer ins_wr_raw = {
    .name = "raw",
    .create = raw_create,
    .open = raw_open,
    .write = raw_write,
    .write_zeroes = raw_write_zeroes,
    .finish = raw_finish,
    .close = raw_close,
};

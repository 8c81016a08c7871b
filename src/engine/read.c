/*
 * read.c - the read layer: choosing a driver, opening backing chains, and
 * reading guest bytes or block status through a chain.
 *
 * Drivers answer for their own layer only; this file walks down the chain
 * for ranges a layer leaves unallocated, as qemu's *_above() helpers do.
 */
#include "engine.h"

#include <string.h>

#define MAX_CHAIN 64    /* the engine's own bound; the host's policy is tighter */

int ins_select_driver(struct ins_ctx *ctx, struct ins_bdev *bd,
                      const char *format, int declared,
                      const struct ins_driver **drv)
{
    struct ins_detect det;
    int rc;

    if (format) {
        *drv = ins_find_driver(format);
        if (!*drv)
            return ins_error(ctx, INS_EINVAL, "Unknown driver '%s'", format);
        if (!declared || *drv != &ins_drv_raw ||
            (ctx->flags & INS_F_UNSAFE_QUIRKS))
            return INS_OK;
        /* A format named inside an image is a claim, not an order: an
         * image may not make us read unknown bytes as a raw disk. */
        rc = ins_detect(ctx, bd, &det);
        if (rc < 0)
            return rc;
        if (det.has_partition_table)
            return INS_OK;
        return ins_error(ctx, INS_EREFUSED,
                         "refusing to read '%s' as raw: the image that names it "
                         "says raw, but it has no MBR or GPT partition table "
                         "(use --unsafe-quirks to allow)", bd->name ? bd->name : "");
    }
    rc = ins_detect(ctx, bd, &det);
    if (rc < 0)
        return rc;
    if (!det.drv)
        return ins_error(ctx, INS_EREFUSED,
                         "not a recognised disk image: no known format header "
                         "and no MBR or GPT partition table (use -f raw to read "
                         "it as raw, or --unsafe-quirks for qemu-img's behaviour)");
    *drv = det.drv;
    return INS_OK;
}

void ins_image_close(struct ins_image *img)
{
    while (img) {
        struct ins_image *next = img->backing;

        img->drv->close(img);
        img = next;
    }
}

int ins_image_open(struct ins_ctx *ctx, struct ins_bdev *file,
                   const struct ins_driver *drv, unsigned flags,
                   int open_backing, struct ins_image **out)
{
    struct ins_image *top = NULL, *img;
    int depth, rc;

    rc = drv->open(ctx, file, flags, &top);
    if (rc < 0)
        return rc;
    if (!drv->read || !drv->block_status) {
        drv->close(top);
        return ins_error(ctx, INS_ENOTSUP, "reading %s images is not supported yet",
                         drv->name);
    }
    img = top;
    for (depth = 1; open_backing && img->drv->backing; depth++) {
        const char *name = NULL, *format = NULL;
        const struct ins_driver *bdrv;
        struct ins_bdev *bd;
        struct ins_image *next;

        rc = img->drv->backing(img, &name, &format);
        if (rc < 0)
            goto fail;
        if (!name || !name[0])
            break;
        if (depth >= MAX_CHAIN) {
            rc = ins_error(ctx, INS_EFBIG, "backing chain is too deep");
            goto fail;
        }
        rc = ctx->open_ref(ctx, INS_REF_BACKING, img->file->name, name, &bd);
        if (rc < 0)
            goto fail;
        rc = ins_select_driver(ctx, bd, format && format[0] ? format : NULL, 1, &bdrv);
        if (rc < 0)
            goto fail;
        rc = bdrv->open(ctx, bd, 0, &next);
        if (rc < 0)
            goto fail;
        if (!bdrv->read || !bdrv->block_status) {
            bdrv->close(next);
            rc = ins_error(ctx, INS_ENOTSUP, "reading %s images is not supported yet",
                           bdrv->name);
            goto fail;
        }
        next->backing_depth = depth;
        img->backing = next;
        img = next;
    }
    *out = top;
    return INS_OK;
fail:
    ins_image_close(top);
    return rc;
}

int ins_image_block_status(struct ins_image *img, uint64_t offset,
                           uint64_t max_len, struct ins_extent *ext,
                           int *depth)
{
    int rc;

    *depth = 0;
    for (;;) {
        if (offset >= img->virtual_size) {
            /* Past the end of a (shorter) backing image: zeros. */
            memset(ext, 0, sizeof(*ext));
            ext->length = max_len;
            ext->flags = INS_BS_ZERO;
            return INS_OK;
        }
        if (max_len > img->virtual_size - offset)
            max_len = img->virtual_size - offset;
        rc = img->drv->block_status(img, offset, max_len, ext);
        if (rc < 0)
            return rc;
        if (ext->length == 0 || ext->length > max_len)
            return ins_error(img->ctx, INS_EIO, "driver returned a bad extent");
        if ((ext->flags & INS_BS_ALLOCATED) || !img->backing)
            return INS_OK;
        max_len = ext->length;
        img = img->backing;
        (*depth)++;
    }
}

int ins_image_read(struct ins_image *img, void *buf, size_t len,
                   uint64_t offset)
{
    uint8_t *p = buf;

    while (len > 0) {
        struct ins_extent ext;
        struct ins_image *layer = img;
        uint64_t off = offset;
        size_t n;
        int rc;

        /* Find the layer that defines this run. */
        for (;;) {
            if (off >= layer->virtual_size) {
                ext.length = len;
                ext.flags = INS_BS_ZERO | INS_BS_ALLOCATED;
                break;
            }
            rc = layer->drv->block_status(layer, off,
                                          len < layer->virtual_size - off
                                              ? len : layer->virtual_size - off,
                                          &ext);
            if (rc < 0)
                return rc;
            if (ext.length == 0 || ext.length > len)
                return ins_error(img->ctx, INS_EIO, "driver returned a bad extent");
            if ((ext.flags & INS_BS_ALLOCATED) || !layer->backing)
                break;
            layer = layer->backing;
        }
        n = (size_t)ext.length;
        if ((ext.flags & INS_BS_ZERO) || !(ext.flags & INS_BS_ALLOCATED)) {
            memset(p, 0, n);
        } else {
            rc = layer->drv->read(layer, p, n, off);
            if (rc < 0)
                return rc;
        }
        p += n;
        offset += n;
        len -= n;
    }
    return INS_OK;
}

/*
 * read.c - the read layer: choosing a driver, opening backing chains, and
 * reading guest bytes or block status through a chain.
 *
 * Drivers answer for their own layer only; this file walks down the chain
 * for ranges a layer leaves unallocated, as qemu's *_above() helpers do.
 */
#include "engine.h"

#include <stdio.h>
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

/* qemu's error_prepend(): the backing file's error, said as qemu says it. */
static int backing_error(struct ins_ctx *ctx, int rc)
{
    char inner[sizeof(ctx->errmsg)];

    snprintf(inner, sizeof(inner), "%s", ctx->errmsg);
    return ins_error(ctx, rc, "Could not open backing file: %s", inner);
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

    rc = drv->open(ctx, file, flags | INS_O_READ, &top);
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
        rc = ctx->open_ref(ctx, img->drv->backing_ref_kind, img->file->name,
                           name, &bd);
        if (rc == 0)
            rc = ins_select_driver(ctx, bd, format && format[0] ? format : NULL, 1, &bdrv);
        if (rc == 0)
            rc = bdrv->open(ctx, bd, INS_O_READ, &next);
        if (rc < 0) {
            rc = backing_error(ctx, rc);
            goto fail;
        }
        if (!bdrv->read || !bdrv->block_status) {
            bdrv->close(next);
            rc = ins_error(ctx, INS_ENOTSUP, "reading %s images is not supported yet",
                           bdrv->name);
            goto fail;
        }
        img->backing = next;
        img = next;
    }
    *out = top;
    return INS_OK;
fail:
    ins_image_close(top);
    return rc;
}

uint64_t ins_file_length(const struct ins_bdev *bd)
{
    return bd->size > UINT64_MAX - 511 ? bd->size : (bd->size + 511) & ~(uint64_t)511;
}

int ins_file_status(struct ins_bdev *bd, uint64_t offset, uint64_t bytes,
                    struct ins_bstat *st)
{
    uint64_t len = ins_file_length(bd), data, hole;
    int rc;

    st->map = offset;
    st->file = bd;
    if (offset >= len) {
        st->pnum = 0;
        return INS_BS_EOF;
    }
    if (bytes > len - offset)
        bytes = len - offset;
    if (offset >= bd->size) {
        /* The tail of the last sector, past end of file. */
        st->pnum = bytes;
        rc = INS_BS_ZERO;
    } else if (!bd->seek) {
        st->pnum = bytes;
        rc = INS_BS_DATA;
    } else if (offset >= bd->bsc_start && offset < bd->bsc_end) {
        st->pnum = bd->bsc_end - offset;    /* inside the data region last seen */
        rc = INS_BS_DATA;
    } else if ((rc = bd->seek(bd->opaque, offset, 0, &data)) == INS_ENOENT) {
        st->pnum = bytes;               /* a trailing hole */
        rc = INS_BS_ZERO;
    } else if (rc < 0) {
        st->pnum = bytes;               /* no information: all data */
        rc = INS_BS_DATA;
    } else if (data == offset) {
        rc = bd->seek(bd->opaque, offset, 1, &hole);
        if (rc < 0 || hole <= offset)
            hole = bd->size;
        st->pnum = hole - offset;
        bd->bsc_start = offset;
        bd->bsc_end = hole;
        rc = INS_BS_DATA;
    } else {
        st->pnum = data - offset;
        rc = INS_BS_ZERO;
    }
    if (st->pnum > bytes)
        st->pnum = bytes;
    rc |= INS_BS_OFFSET_VALID | INS_BS_ALLOCATED;
    if (offset + st->pnum == len)
        rc |= INS_BS_EOF;
    return rc;
}

int ins_node_status(struct ins_image *img, uint64_t offset, uint64_t bytes,
                    struct ins_bstat *st)
{
    uint64_t total = img->virtual_size;
    int ret;

    memset(st, 0, sizeof(*st));
    if (offset >= total)
        return INS_BS_EOF;
    if (bytes == 0)
        return 0;
    if (bytes > total - offset)
        bytes = total - offset;

    ret = img->drv->block_status(img, offset, bytes, st);
    if (ret < 0)
        return ret;
    if (st->pnum == 0)
        return ins_error(img->ctx, INS_EIO, "%s driver returned an empty extent",
                         img->drv->name);
    if (st->pnum > bytes)
        st->pnum = bytes;
    if ((ret & INS_BS_OFFSET_VALID) && !st->file)
        return ins_error(img->ctx, INS_EIO, "%s driver returned no file",
                         img->drv->name);

    if (ret & INS_BS_RAW) {
        struct ins_bstat fs;

        ret = ins_file_status(st->file, st->map, st->pnum, &fs);
        if (ret < 0)
            return ret;
        if (fs.pnum == 0) {
            /* Past the end of the file entirely: zeros. */
            st->pnum = bytes;
            ret = INS_BS_ZERO | INS_BS_ALLOCATED | INS_BS_OFFSET_VALID;
        } else {
            /* The file's answer, its EOF bit included, as qemu passes it up. */
            st->pnum = fs.pnum;
        }
        goto out;
    }

    if (ret & (INS_BS_DATA | INS_BS_ZERO)) {
        ret |= INS_BS_ALLOCATED;
    } else if (img->drv->supports_backing) {
        if (!img->backing)
            ret |= INS_BS_ZERO;
        else if (offset >= img->backing->virtual_size)
            ret |= INS_BS_ZERO;
    }

    if ((ret & INS_BS_RECURSE) && (ret & INS_BS_DATA) && !(ret & INS_BS_ZERO) &&
        (ret & INS_BS_OFFSET_VALID)) {
        struct ins_bstat fs;
        int r2 = ins_file_status(st->file, st->map, st->pnum, &fs);

        /* Extra information only: errors are ignored, as qemu does. */
        if (r2 >= 0) {
            if ((r2 & INS_BS_EOF) && (fs.pnum == 0 || (r2 & INS_BS_ZERO))) {
                ret |= INS_BS_ZERO;     /* reads past the file's end */
            } else {
                st->pnum = fs.pnum;
                ret |= r2 & INS_BS_ZERO;
            }
        }
    }
    ret &= ~INS_BS_RECURSE;
out:
    if (offset + st->pnum == total)
        ret |= INS_BS_EOF;
    return ret;
}

int ins_status_above(struct ins_image *img, uint64_t offset, uint64_t bytes,
                     struct ins_bstat *st, int *depth)
{
    struct ins_image *p;
    uint64_t eof = 0;
    int dummy, ret;

    if (!depth)
        depth = &dummy;
    *depth = 0;
    ret = ins_node_status(img, offset, bytes, st);
    ++*depth;
    if (ret < 0 || st->pnum == 0 || (ret & INS_BS_ALLOCATED))
        return ret;
    if (ret & INS_BS_EOF)
        eof = offset + st->pnum;
    bytes = st->pnum;

    for (p = img->backing; p; p = p->backing) {
        ret = ins_node_status(p, offset, bytes, st);
        ++*depth;
        if (ret < 0)
            return ret;
        if (st->pnum == 0) {
            /* The backing image is shorter: zeros, as if allocated here. */
            st->pnum = bytes;
            st->file = NULL;
            ret = INS_BS_ZERO | INS_BS_ALLOCATED;
            break;
        }
        if (ret & INS_BS_ALLOCATED) {
            ret &= ~INS_BS_EOF;
            break;
        }
        bytes = st->pnum;
    }
    if (offset + st->pnum == eof)
        ret |= INS_BS_EOF;
    return ret;
}

int ins_read_mapped(struct ins_image *img, void *buf, size_t len,
                    uint64_t offset)
{
    uint8_t *p = buf;

    while (len > 0) {
        struct ins_bstat st;
        size_t n;
        int rc;

        memset(&st, 0, sizeof(st));
        rc = img->drv->block_status(img, offset, len, &st);
        if (rc < 0)
            return rc;
        if (st.pnum == 0)
            return ins_error(img->ctx, INS_EIO, "%s driver returned an empty extent",
                             img->drv->name);
        n = st.pnum < len ? (size_t)st.pnum : len;
        if ((rc & (INS_BS_DATA | INS_BS_RAW)) && (rc & INS_BS_OFFSET_VALID)) {
            rc = ins_read_zfill(st.file ? st.file : img->file, p, n, st.map);
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

int ins_image_read(struct ins_image *img, void *buf, size_t len,
                   uint64_t offset)
{
    uint8_t *p = buf;

    while (len > 0) {
        struct ins_image *layer = img;
        struct ins_bstat st;
        size_t n = len;
        int ret;

        /* Find the layer that defines this run: a lower layer only as far
         * as the layers above it leave the run unallocated. */
        for (;;) {
            if (offset >= layer->virtual_size) {
                st.pnum = n;
                ret = INS_BS_ZERO | INS_BS_ALLOCATED;
                break;
            }
            ret = ins_node_status(layer, offset, n, &st);
            if (ret < 0)
                return ret;
            if (st.pnum < n)
                n = (size_t)st.pnum;
            if ((ret & INS_BS_ALLOCATED) || !layer->backing)
                break;
            layer = layer->backing;
        }
        if (n == 0)
            return ins_error(img->ctx, INS_EIO, "%s driver returned an empty "
                             "extent", layer->drv->name);
        if ((ret & INS_BS_ZERO) || !(ret & INS_BS_ALLOCATED)) {
            memset(p, 0, n);
        } else {
            ret = layer->drv->read(layer, p, n, offset);
            if (ret < 0)
                return ret;
        }
        p += n;
        offset += n;
        len -= n;
    }
    return INS_OK;
}

static int locate_run(struct ins_image *img, uint64_t offset, uint64_t bytes,
                      struct ins_bdev **file, uint64_t *map, uint64_t *pnum)
{
    struct ins_image *layer = img;
    struct ins_bstat st;
    uint64_t n = bytes;
    int ret;

    *pnum = 0;
    if (bytes == 0)
        return 0;
    /* The defining layer, as ins_image_read finds it. */
    for (;;) {
        if (offset >= layer->virtual_size) {
            *pnum = n;
            return 2;               /* zeros past a shorter backing image */
        }
        ret = ins_node_status(layer, offset, n, &st);
        if (ret < 0)
            return ret;
        if (st.pnum == 0)
            return ins_error(img->ctx, INS_EIO, "%s driver returned an empty "
                             "extent", layer->drv->name);
        if (st.pnum < n)
            n = st.pnum;
        if ((ret & INS_BS_ALLOCATED) || !layer->backing)
            break;
        layer = layer->backing;
    }
    *pnum = n;
    if ((ret & INS_BS_ZERO) || !(ret & INS_BS_ALLOCATED))
        return 2;                   /* as ins_image_read: zeros */
    if (!(ret & INS_BS_DATA))
        return 0;
    if (layer->drv->locate) {
        memset(&st, 0, sizeof(st));
        ret = layer->drv->locate(layer, offset, n, &st);
        if (ret < 0)
            return ret;
        if (st.pnum == 0 || st.pnum > n)
            return ins_error(img->ctx, INS_EIO, "%s driver returned a bad "
                             "extent", layer->drv->name);
        *pnum = n = st.pnum;
        if (ret != 1)
            return ret == 2 ? 2 : 0;
    } else if (!layer->drv->plain_map ||
               (ret & (INS_BS_OFFSET_VALID | INS_BS_COMPRESSED)) !=
               INS_BS_OFFSET_VALID) {
        return 0;
    }
    if (!st.file || st.map > st.file->size || n > st.file->size - st.map)
        return 0;
    *file = st.file;
    *map = st.map;
    return 1;
}

int ins_image_locate(struct ins_image *img, uint64_t offset, uint64_t bytes,
                     struct ins_bdev **file, uint64_t *map, uint64_t *pnum)
{
    int rc = locate_run(img, offset, bytes, file, map, pnum);

    /* Runs that continue each other (zeros after zeros, bytes following
     * on in the same file) count as one. */
    while ((rc == 1 || rc == 2) && *pnum < bytes) {
        struct ins_bdev *f2 = NULL;
        uint64_t m2 = 0, n2;
        int r2 = locate_run(img, offset + *pnum, bytes - *pnum, &f2, &m2, &n2);

        if (r2 != rc || (rc == 1 && (f2 != *file || m2 != *map + *pnum)))
            break;
        *pnum += n2;
    }
    return rc;
}

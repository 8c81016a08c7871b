/*
 * snapshot.c - loading an internal snapshot's view of an image, as qemu's
 * bdrv_snapshot_load_tmp() does (qemu-img measure -l, convert -l).
 *
 * The generic checks and messages live here; the format's load_snapshot
 * hook does the work.  qemu-img always opens these images read-only, so
 * qemu's "Device is not readonly" cannot happen, and its device name is
 * always empty.
 */
#include "engine.h"

int ins_image_load_snapshot(struct ins_image *img, const char *id,
                            const char *name)
{
    struct ins_ctx *ctx = img->ctx;

    if (!id && !name)
        return ins_error(ctx, INS_EINVAL, "snapshot_id and name are both NULL");
    if (!img->drv->load_snapshot)
        return ins_error(ctx, INS_ENOTSUP, "Block format '%s' used by device "
                         "'' does not support temporarily loading internal "
                         "snapshots", img->drv->name);
    return img->drv->load_snapshot(img, id, name);
}

int ins_image_load_snapshot_by_id_or_name(struct ins_image *img,
                                          const char *id_or_name)
{
    int rc = ins_image_load_snapshot(img, id_or_name, NULL);

    /* qemu retries by name on "not found" and on "invalid" alike, so a
     * snapshot whose L1 table is invalid reads as not found by its id. */
    if (rc == INS_ENOENT || rc == INS_EINVAL)
        rc = ins_image_load_snapshot(img, NULL, id_or_name);
    return rc;
}

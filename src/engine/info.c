/*
 * info.c - the info operation: qemu's ImageInfo for one image, as a tree.
 *
 * Members are added in the QAPI schema's order (BlockNodeInfo, then
 * BlockGraphInfo's "children"); renderers reorder them as qemu's QDict
 * does.  The host strips "children" for the qemu 7.2 profile.
 */
#include "engine.h"

#include <string.h>

#define SECTOR 512u

static uint64_t round_up_sector(uint64_t n)
{
    return n > UINT64_MAX - (SECTOR - 1) ? n : (n + SECTOR - 1) / SECTOR * SECTOR;
}

/* The protocol ("file") node qemu puts under every format node. */
static struct tree *file_node_info(struct tree_builder *tb,
                                   struct ins_bdev *bd, int exact)
{
    struct tree *d = tree_new_dict(tb), *spec;

    tree_put_str(tb, d, "filename", bd->name ? bd->name : "");
    tree_put_str(tb, d, "format", "file");
    tree_put_bool(tb, d, "dirty-flag", 0);
    /* qemu reports blocks allocated and a sector-rounded length;
     * --ignore-quirks reports the file's exact length for both. */
    tree_put_int(tb, d, "actual-size", (int64_t)(exact ? bd->size : bd->allocated));
    tree_put_int(tb, d, "virtual-size",
                 (int64_t)(exact ? bd->size : round_up_sector(bd->size)));
    spec = tree_put_dict(tb, d, "format-specific");
    tree_put_str(tb, spec, "type", "file");
    tree_put_dict(tb, spec, "data");
    tree_put_list(tb, d, "children");
    return d;
}

static void put_snapshots(struct tree_builder *tb, struct tree *d,
                          const struct ins_info *info)
{
    struct tree *list = tree_put_list(tb, d, "snapshots");
    size_t i;

    for (i = 0; i < info->n_snapshots; i++) {
        const struct ins_snapshot *sn = &info->snapshots[i];
        struct tree *s = tree_append(tb, list, tree_new_dict(tb));

        tree_put_str(tb, s, "id", sn->id ? sn->id : "");
        tree_put_str(tb, s, "name", sn->name ? sn->name : "");
        tree_put_int(tb, s, "vm-state-size", (int64_t)sn->vm_state_size);
        tree_put_int(tb, s, "date-sec", sn->date_sec);
        tree_put_int(tb, s, "date-nsec", sn->date_nsec);
        tree_put_int(tb, s, "vm-clock-sec",
                     (int64_t)(sn->vm_clock_nsec / 1000000000u));
        tree_put_int(tb, s, "vm-clock-nsec",
                     (int64_t)(sn->vm_clock_nsec % 1000000000u));
        if (sn->has_icount)
            tree_put_int(tb, s, "icount", (int64_t)sn->icount);
    }
}

static void free_info(struct ins_ctx *ctx, struct ins_info *info)
{
    size_t i;

    for (i = 0; i < info->n_snapshots; i++) {
        ins_free(ctx, info->snapshots[i].id);
        ins_free(ctx, info->snapshots[i].name);
    }
    ins_free(ctx, info->snapshots);
    ins_free(ctx, info->backing_filename);
    ins_free(ctx, info->backing_format);
    for (i = 0; i < info->n_children; i++)
        ins_free(ctx, info->children[i].name);
}

static int64_t sum_allocated(const struct ins_info *info, int exact)
{
    uint64_t sum = 0;
    size_t i, j;

    for (i = 0; i < info->n_children; i++) {
        struct ins_bdev *bd = info->children[i].bdev;

        for (j = 0; j < i; j++)
            if (info->children[j].bdev == bd)
                break;
        if (j == i && ins_add_overflow(sum, exact ? bd->size : bd->allocated, &sum))
            sum = INT64_MAX;
    }
    return sum > INT64_MAX ? INT64_MAX : (int64_t)sum;
}

int ins_op_info(struct ins_ctx *ctx, struct ins_bdev *file,
                const char *filename, const struct ins_driver *drv,
                unsigned open_flags, struct tree_builder *tb,
                struct tree **out)
{
    struct ins_info info;
    struct ins_image *img = NULL;
    struct tree *d, *children;
    int exact = (ctx->flags & INS_F_IGNORE_QUIRKS) != 0;
    size_t i;
    int rc;

    memset(&info, 0, sizeof(info));
    rc = drv->open(ctx, file, open_flags, &img);
    if (rc < 0)
        return rc;
    rc = drv->info(img, tb, &info);
    if (rc < 0)
        goto out;
    if (info.n_children == 0) {
        info.children[0].name = ins_strdup(ctx, "file");
        info.children[0].bdev = file;
        info.n_children = 1;
        if (!info.children[0].name) {
            rc = ins_error(ctx, INS_ENOMEM, "Out of memory");
            goto out;
        }
    }

    d = tree_new_dict(tb);
    tree_put_str(tb, d, "filename", filename);
    tree_put_str(tb, d, "format", drv->name);
    if (info.has_dirty_flag)
        tree_put_bool(tb, d, "dirty-flag", info.dirty_flag);
    tree_put_int(tb, d, "actual-size",
                 info.has_actual_size && !exact ? info.actual_size
                                                : sum_allocated(&info, exact));
    tree_put_int(tb, d, "virtual-size", (int64_t)info.virtual_size);
    if (info.has_cluster_size)
        tree_put_int(tb, d, "cluster-size", info.cluster_size);
    if (info.encrypted)
        tree_put_bool(tb, d, "encrypted", 1);
    if (info.backing_filename && info.backing_filename[0]) {
        char *full = ins_path_combine(ctx, filename, info.backing_filename);

        tree_put_str(tb, d, "backing-filename", info.backing_filename);
        if (full)
            tree_put_str(tb, d, "full-backing-filename", full);
        ins_free(ctx, full);
        if (info.backing_format && info.backing_format[0])
            tree_put_str(tb, d, "backing-filename-format", info.backing_format);
    }
    if (info.has_snapshots && info.n_snapshots > 0)
        put_snapshots(tb, d, &info);
    if (info.format_specific) {
        struct tree *spec = tree_put_dict(tb, d, "format-specific");

        tree_put_str(tb, spec, "type", info.format_specific_type ?
                     info.format_specific_type : drv->name);
        tree_put(tb, spec, "data", info.format_specific);
        info.format_specific = NULL;
    }
    children = tree_put_list(tb, d, "children");
    /* qemu lists children newest first. */
    for (i = info.n_children; i-- > 0;) {
        struct tree *c = tree_append(tb, children, tree_new_dict(tb));

        tree_put_str(tb, c, "name", info.children[i].name);
        tree_put(tb, c, "info", file_node_info(tb, info.children[i].bdev, exact));
    }
    if (tb->failed) {
        rc = ins_error(ctx, INS_ENOMEM, "Out of memory");
        goto out;
    }
    *out = d;
    rc = INS_OK;
out:
    if (info.format_specific)
        tree_free(tb->alloc, info.format_specific);
    free_info(ctx, &info);
    drv->close(img);
    return rc;
}

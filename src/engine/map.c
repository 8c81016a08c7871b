/*
 * map.c - the map operation: qemu-img map's walk over guest offsets.
 *
 * Entries are found layer by layer as qemu's get_block_status() does,
 * merged as qemu's entry_mergeable() does, and sent to the host in
 * batches through ctx->emit (each entry once, in order), so memory stays
 * bounded however fragmented the image is.  The host renders them.
 */
#include "engine.h"

#include <stddef.h>
#include <string.h>

#define MAP_BATCH 4096
#define MAP_MAX_FILES 4096

struct map_entry {
    uint64_t start, length, offset;
    int64_t depth;
    int present, zero, data, compressed, has_offset;
    struct ins_bdev *file;      /* non-NULL iff qemu has a filename */
};

struct map_out {
    struct ins_ctx *ctx;
    struct tree_builder tb;
    struct tree *batch, *files;
    uint8_t records[MAP_BATCH * MAP_RECORD_SIZE];
    size_t n_entries;
    struct ins_bdev *known[MAP_MAX_FILES];   /* file index -> bdev */
    size_t n_known;
};

static int get_block_status(struct ins_image *top, uint64_t offset,
                            uint64_t bytes, struct map_entry *e)
{
    struct ins_image *img = top;
    struct ins_bstat st;
    int64_t depth = 0;
    int ret;

    for (;;) {
        ret = ins_node_status(img, offset, bytes, &st);
        if (ret < 0)
            return ret;
        bytes = st.pnum;
        if (ret & (INS_BS_ZERO | INS_BS_DATA))
            break;
        img = img->drv->supports_backing ? img->backing : NULL;
        if (!img) {
            ret = 0;
            break;
        }
        depth++;
    }
    memset(e, 0, sizeof(*e));
    e->start = offset;
    e->length = bytes;
    e->data = (ret & INS_BS_DATA) != 0;
    e->zero = (ret & INS_BS_ZERO) != 0;
    e->compressed = (ret & INS_BS_COMPRESSED) != 0;
    e->has_offset = (ret & INS_BS_OFFSET_VALID) != 0;
    e->offset = e->has_offset ? st.map : 0;
    e->depth = depth;
    e->present = (ret & INS_BS_ALLOCATED) != 0;
    e->file = e->has_offset ? st.file : NULL;
    return INS_OK;
}

static int same_file(const struct map_entry *a, const struct map_entry *b)
{
    if (!a->file != !b->file)
        return 0;
    if (!a->file)
        return 1;
    return a->file == b->file ||
           strcmp(a->file->name ? a->file->name : "",
                  b->file->name ? b->file->name : "") == 0;
}

static int mergeable(const struct map_entry *curr, const struct map_entry *next,
                     int with_compressed)
{
    if (curr->length == 0)
        return 0;
    if (curr->zero != next->zero || curr->data != next->data ||
        (with_compressed && curr->compressed != next->compressed) ||
        curr->depth != next->depth || curr->present != next->present ||
        !same_file(curr, next) || curr->has_offset != next->has_offset)
        return 0;
    if (curr->has_offset && curr->offset + curr->length != next->offset)
        return 0;
    return 1;
}

static int flush(struct map_out *mo)
{
    int rc = INS_OK;

    if (!mo->batch)
        return INS_OK;
    tree_put(&mo->tb, mo->batch, "records",
             tree_new_blob(&mo->tb, mo->records, mo->n_entries * MAP_RECORD_SIZE));
    if (mo->tb.failed)
        rc = ins_error(mo->ctx, INS_ENOMEM, "Out of memory");
    else if (mo->ctx->emit)
        rc = mo->ctx->emit(mo->ctx, mo->batch);
    tree_free(mo->tb.alloc, mo->batch);
    mo->batch = mo->files = NULL;
    mo->n_entries = 0;
    mo->tb.bytes = 0;
    return rc;
}

static int64_t file_index(struct map_out *mo, struct ins_bdev *bd)
{
    size_t i;

    for (i = 0; i < mo->n_known; i++)
        if (mo->known[i] == bd)
            return (int64_t)i;
    if (mo->n_known >= MAP_MAX_FILES)
        return -1;
    mo->known[mo->n_known] = bd;
    tree_append(&mo->tb, mo->files, tree_new_str(&mo->tb, bd->name ? bd->name : ""));
    return (int64_t)mo->n_known++;
}

static void put_le64(uint8_t *p, uint64_t v)
{
    int i;

    for (i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static int send_entry(struct map_out *mo, const struct map_entry *e)
{
    uint8_t *rec;
    int64_t idx = -1;
    unsigned flags = (e->present ? MAPF_PRESENT : 0) | (e->zero ? MAPF_ZERO : 0) |
                     (e->data ? MAPF_DATA : 0) |
                     (e->compressed ? MAPF_COMPRESSED : 0) |
                     (e->has_offset ? MAPF_HAS_OFFSET : 0);

    if (!mo->batch) {
        mo->batch = tree_new_dict(&mo->tb);
        mo->files = tree_put_list(&mo->tb, mo->batch, "files");
        /* Indexes restart with every batch's file list. */
        mo->n_known = 0;
    }
    if (e->file) {
        idx = file_index(mo, e->file);
        if (idx < 0)
            return ins_error(mo->ctx, INS_EFBIG, "too many files in the map");
    }
    rec = mo->records + mo->n_entries * MAP_RECORD_SIZE;
    put_le64(rec, e->start);
    put_le64(rec + 8, e->length);
    put_le64(rec + 16, (uint64_t)e->depth);
    put_le64(rec + 24, e->offset);
    put_le64(rec + 32, (uint64_t)idx);
    rec[40] = (uint8_t)flags;
    if (++mo->n_entries >= MAP_BATCH)
        return flush(mo);
    return mo->tb.failed ? ins_error(mo->ctx, INS_ENOMEM, "Out of memory") : INS_OK;
}

/* qemu's dump_map_entry(): what gets printed, and the human format's
 * folding of "no data" into "zero" for the next entry. */
static int dump_entry(struct map_out *mo, int human, const struct map_entry *e,
                      struct map_entry *next)
{
    if (human) {
        if (e->data && !e->has_offset) {
            int rc = flush(mo);

            if (rc < 0)
                return rc;
            return ins_error(mo->ctx, INS_ENOTSUP,
                             "File contains external, encrypted or compressed clusters.");
        }
        if (next && (!next->data || next->zero)) {
            next->data = 0;
            next->zero = 1;
        }
        if (!(e->data && !e->zero))
            return INS_OK;
    }
    return send_entry(mo, e);
}

static int map_walk(struct map_out *mo, struct ins_image *img, uint64_t start,
                    int64_t max_length, int human, int with_compressed)
{
    struct map_entry curr, next;
    uint64_t length = img->virtual_size;
    int rc;

    if (max_length >= 0 && start <= UINT64_MAX - (uint64_t)max_length &&
        start + (uint64_t)max_length < length)
        length = start + (uint64_t)max_length;

    memset(&curr, 0, sizeof(curr));
    curr.start = start;
    while (curr.start + curr.length < length) {
        uint64_t offset = curr.start + curr.length;

        rc = get_block_status(img, offset, length - offset, &next);
        if (rc < 0) {
            int frc = flush(mo);

            return frc < 0 ? frc : rc;
        }
        if (mergeable(&curr, &next, with_compressed)) {
            curr.length += next.length;
            continue;
        }
        if (curr.length > 0) {
            rc = dump_entry(mo, human, &curr, &next);
            if (rc < 0)
                return rc;
        }
        curr = next;
    }
    rc = dump_entry(mo, human, &curr, NULL);
    if (rc < 0)
        return rc;
    return flush(mo);
}

int ins_op_map(struct ins_ctx *ctx, struct ins_image *img, uint64_t start,
               int64_t max_length, int human, int with_compressed)
{
    /* The record buffer is large: on the heap, not the stack. */
    struct map_out *mo = ins_malloc(ctx, sizeof(*mo));
    int rc;

    if (!mo)
        return ins_error(ctx, INS_ENOMEM, "Out of memory");
    memset(mo, 0, offsetof(struct map_out, records));
    mo->ctx = ctx;
    tree_builder_init(&mo->tb, ctx->alloc);
    rc = map_walk(mo, img, start, max_length, human, with_compressed);
    if (mo->batch)
        tree_free(mo->tb.alloc, mo->batch);
    ins_free(ctx, mo);
    return rc;
}

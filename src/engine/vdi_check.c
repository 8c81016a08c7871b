/*
 * vdi_check.c - qemu-img check for VDI images.
 *
 * qemu's vdi_co_check looks at the block map only: entries pointing past
 * the map's range, two entries sharing a data block, and the header's
 * count of allocated blocks.  Safe mode adds what qemu does not look at:
 * the layout (header, block map and data area must not overlap, the map
 * must lie inside the file), blocks that point past the end of the file,
 * and leaks (whole data blocks in the file that no entry references).
 *
 * The block map is streamed in chunks; the only structure in proportion
 * to the image is a bit per block of the map's range (at most 64 MiB for
 * the largest map qemu accepts).
 */
#include "fmt_check.h"

#include <string.h>

#define VDI_HEADER_SIZE     512
#define VDI_BLOCK_SIZE      (1u << 20)
#define VDI_DISCARDED       0xfffffffeu
#define VDI_OFF_OFFSET_BMAP 340
#define VDI_OFF_OFFSET_DATA 344
#define VDI_OFF_BLOCKS      384
#define VDI_OFF_ALLOCATED   388
#define CHUNK               65536u

struct vdi_check {
    struct ins_image *img;
    struct ins_check_result *res;
    int safe;
    uint32_t offset_bmap, offset_data, blocks, allocated_hdr;
    uint64_t fsize;
    uint8_t *used;              /* data blocks referenced so far */
    /* What the walk finds. */
    uint32_t allocated;
    int64_t prev_phys;          /* for fragmentation: last block's index */
    uint64_t max_end;           /* end of the last referenced block */
    int64_t n_alloc, n_frag;    /* statistics (safe mode) */
    struct ins_check_log log;   /* stderr lines, batched */
};

/* qemu's VDI_IS_ALLOCATED: everything below the "discarded" marker. */
static int is_allocated(uint32_t e)
{
    return e < VDI_DISCARDED;
}

/* Safe mode: the header, the block map and the data area in order. */
static void check_layout(struct vdi_check *c)
{
    uint64_t bmap_end = (uint64_t)c->offset_bmap + (uint64_t)c->blocks * 4;

    if (c->offset_bmap < VDI_HEADER_SIZE) {
        ins_check_logf(&c->log, "ERROR: block map offset %u overlaps the "
                       "header", c->offset_bmap);
        c->res->corruptions++;
    }
    if (c->offset_data < bmap_end || c->offset_data < VDI_HEADER_SIZE) {
        ins_check_logf(&c->log, "ERROR: data offset %u overlaps the header "
                       "or the block map (%u-%llu)", c->offset_data,
                       c->offset_bmap, (unsigned long long)bmap_end);
        c->res->corruptions++;
    }
    if (bmap_end > c->fsize) {
        ins_check_logf(&c->log, "ERROR: block map (%u-%llu) ends after the "
                       "end of the file (%llu)", c->offset_bmap,
                       (unsigned long long)bmap_end,
                       (unsigned long long)c->fsize);
        c->res->corruptions++;
    }
}

/* One block map entry, as qemu checks it, plus safe mode's bounds. */
static void check_entry(struct vdi_check *c, uint32_t block, uint32_t e)
{
    uint64_t start, end;

    if (!is_allocated(e))
        return;
    if (e >= c->blocks) {
        ins_check_logf(&c->log, "ERROR: block index %u too large, is %u", block, e);
        c->res->corruptions++;
        return;
    }
    c->allocated++;
    /* qemu prints the entry twice: its table remembers the entry itself. */
    if (ins_bitset_test_set(c->used, e)) {
        ins_check_logf(&c->log, "ERROR: block index %u also used by %u", e, e);
        c->res->corruptions++;
        return;
    }
    if (!c->safe)
        return;
    start = (uint64_t)c->offset_data + (uint64_t)e * VDI_BLOCK_SIZE;
    end = start + VDI_BLOCK_SIZE;
    if (end > c->fsize) {
        ins_check_logf(&c->log, "ERROR: block %u at offset %llu %s after the end of "
                       "the file (%llu)", block, (unsigned long long)start,
                       start >= c->fsize ? "points" : "ends",
                       (unsigned long long)c->fsize);
        c->res->corruptions++;
    }
    if (end > c->max_end)
        c->max_end = end;
    c->n_alloc++;
    if (c->prev_phys >= 0 && (int64_t)e != c->prev_phys + 1)
        c->n_frag++;
    c->prev_phys = e;
}

/* Safe mode: whole data blocks in the file that nothing references. */
static void check_leaks(struct vdi_check *c)
{
    uint64_t in_file = 0, k;

    if (c->fsize > c->offset_data)
        in_file = (c->fsize - c->offset_data) / VDI_BLOCK_SIZE;
    for (k = 0; k < in_file && k < c->blocks; k++) {
        if (!ins_bitset_test(c->used, k)) {
            ins_check_logf(&c->log, "Leaked block %llu (offset %llu)",
                           (unsigned long long)k,
                           (unsigned long long)(c->offset_data + k * VDI_BLOCK_SIZE));
            c->res->leaks++;
        }
    }
    /* Blocks past the map's range cannot be referenced at all: one line,
     * however large a (sparse) file claims to be. */
    if (in_file > c->blocks) {
        ins_check_logf(&c->log, "Leaked blocks %u-%llu (beyond the block map's "
                       "range)", c->blocks, (unsigned long long)(in_file - 1));
        c->res->leaks += (int64_t)(in_file - c->blocks);
    }
}

static int walk_bmap(struct vdi_check *c)
{
    struct ins_ctx *ctx = c->img->ctx;
    uint64_t bytes = (uint64_t)c->blocks * 4, done;
    uint8_t *chunk = ins_malloc(ctx, CHUNK);
    int rc = INS_OK;

    if (!chunk)
        return ins_error(ctx, INS_ENOMEM, "Out of memory");
    for (done = 0; done < bytes; done += CHUNK) {
        size_t n = bytes - done < CHUNK ? (size_t)(bytes - done) : CHUNK, j;

        /* qemu read the map at open; past end of file it reads zeros. */
        rc = ins_read_zfill(c->img->file, chunk, n, c->offset_bmap + done);
        if (rc < 0) {
            rc = ins_error(ctx, rc, "Could not read VDI block map");
            break;
        }
        for (j = 0; j < n; j += 4)
            check_entry(c, (uint32_t)((done + j) / 4), ins_le32(chunk + j));
    }
    ins_free(ctx, chunk);
    return rc;
}

int ins_vdi_check(struct ins_image *img, unsigned fix,
                  struct ins_check_result *res)
{
    struct ins_ctx *ctx = img->ctx;
    struct vdi_check c;
    uint8_t h[VDI_HEADER_SIZE];
    int rc;

    /* qemu cannot repair VDI images: qemu-img says "not supported". */
    if (fix)
        return ins_error(ctx, INS_ENOTSUP,
                         "This image format does not support checks");
    memset(&c, 0, sizeof(c));
    c.img = img;
    c.res = res;
    c.safe = !ins_check_unsafe(img);
    c.prev_phys = -1;
    rc = ins_read_zfill(img->file, h, sizeof(h), 0);
    if (rc < 0)
        return ins_error(ctx, rc, "Could not read VDI header");
    c.offset_bmap = ins_le32(h + VDI_OFF_OFFSET_BMAP);
    c.offset_data = ins_le32(h + VDI_OFF_OFFSET_DATA);
    c.blocks = ins_le32(h + VDI_OFF_BLOCKS);
    c.allocated_hdr = ins_le32(h + VDI_OFF_ALLOCATED);
    c.fsize = img->file->size;
    if (c.blocks) {
        c.used = ins_bitset_new(ctx, c.blocks);
        if (!c.used) {
            res->check_errors++;
            return ins_error(ctx, INS_ENOMEM, "Out of memory");
        }
    }
    ins_check_log_init(&c.log, ctx);
    if (c.safe)
        check_layout(&c);
    rc = walk_bmap(&c);
    if (rc == INS_OK && c.allocated != c.allocated_hdr) {
        ins_check_logf(&c.log, "ERROR: allocated blocks mismatch, is %u, should "
                       "be %u", c.allocated, c.allocated_hdr);
        res->corruptions++;
    }
    if (rc == INS_OK && c.safe) {
        check_leaks(&c);
        /* Statistics qemu does not give for VDI: only when asked, so that
         * a clean image's output stays qemu-img's. */
        if (ctx->flags & INS_F_EXTRA_DETAIL) {
            res->total_clusters = c.blocks;
            res->allocated_clusters = c.n_alloc;
            res->fragmented_clusters = c.n_frag;
            res->image_end_offset = (int64_t)(c.max_end ? c.max_end : c.offset_data);
        }
    }
    ins_free(ctx, c.used);
    ins_check_log_free(&c.log);
    return rc;
}

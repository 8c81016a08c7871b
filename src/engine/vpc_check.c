/*
 * vpc_check.c - check for VHD images (qemu's "vpc" format).
 *
 * qemu has no check for vpc: with --unsafe-quirks we answer as qemu-img
 * does ("This image format does not support checks", exit 63).  The safe
 * default validates what the format defines:
 *
 *   - the footer: its checksum, and for a dynamic disk that the copy at
 *     offset 0 and the footer at the end of the file are both there and
 *     identical (the specification keeps them in step);
 *   - a fixed disk's file holds the whole virtual disk before its footer;
 *   - the dynamic header: cookie, checksum, the BAT inside the file;
 *   - every allocated block (sector bitmap + data): inside the file,
 *     before the trailing footer, clear of the metadata and of every other
 *     block;
 *   - leaks: whole block-sized gaps between the metadata and the footer
 *     that no BAT entry references.
 *
 * Block statistics and the image end offset are reported as for qcow2
 * (qemu-img prints nothing for vpc to stay equal to).  Allocated blocks
 * are collected (8 bytes each, capped) and sorted to find overlaps.
 */
#include "fmt_check.h"

#include <string.h>

#define FOOTER_SIZE      512
#define DYN_HEADER_SIZE  1024
#define VHD_FIXED        2
#define BAT_UNUSED       0xffffffffu
#define BAT_CHUNK        65536u
#define F_DATA_OFFSET    16
#define F_CURRENT_SIZE   48
#define F_TYPE           60
#define F_CHECKSUM       64
#define D_TABLE_OFFSET   16
#define D_MAX_ENTRIES    28
#define D_BLOCK_SIZE     32
#define D_CHECKSUM       36
/* Allocated blocks we are willing to sort for the overlap check (a 2 TiB
 * disk in 2 MiB blocks has 1 Mi). */
#define MAX_BLOCKS       (16u << 20)

struct vpc_block {
    uint64_t start;             /* byte offset of the sector bitmap */
    uint32_t index;             /* BAT index */
};

struct vpc_check {
    struct ins_image *img;
    struct ins_ctx *ctx;
    struct ins_check_result *res;
    uint64_t flen;              /* file length, whole sectors */
    uint64_t footer_pos;        /* where the trailing footer is */
    uint8_t footer[FOOTER_SIZE];
    uint8_t dyn[DYN_HEADER_SIZE];
    uint64_t dyn_off, bat_off, bat_end;
    uint32_t entries, block_size, bitmap_size;
    struct vpc_block *blocks;
    size_t n_blocks, cap_blocks;
    int too_many;
    struct ins_check_log log;   /* stderr lines, batched */
};

static void corrupt(struct vpc_check *c)
{
    c->res->corruptions++;
}

/* One's complement of the byte sum of n bytes, skipping a 4-byte field. */
static uint32_t vhd_checksum(const uint8_t *buf, size_t n, size_t skip)
{
    uint32_t sum = 0;
    size_t i;

    for (i = 0; i < n; i++)
        if (i < skip || i >= skip + 4)
            sum += buf[i];
    return ~sum;
}

static int footer_sound(const uint8_t *f)
{
    return memcmp(f, "conectix", 8) == 0 &&
           vhd_checksum(f, FOOTER_SIZE, F_CHECKSUM) == ins_be32(f + F_CHECKSUM);
}

/* The footer(s).  Returns whether the disk is dynamic. */
static int check_footers(struct vpc_check *c)
{
    uint8_t head[FOOTER_SIZE], tail[FOOTER_SIZE];
    int dynamic;

    ins_read_zfill(c->img->file, head, sizeof(head), 0);
    if (c->flen >= FOOTER_SIZE)
        ins_read_zfill(c->img->file, tail, sizeof(tail), c->flen - FOOTER_SIZE);
    else
        memset(tail, 0, sizeof(tail));
    c->footer_pos = c->flen >= FOOTER_SIZE ? c->flen - FOOTER_SIZE : 0;

    if (memcmp(head, "conectix", 8) != 0) {
        /* A fixed disk: the footer at the end is the only one. */
        memcpy(c->footer, tail, FOOTER_SIZE);
        if (!footer_sound(tail)) {
            ins_check_logf(&c->log, "ERROR: footer checksum is wrong");
            corrupt(c);
        }
        return 0;
    }
    memcpy(c->footer, head, FOOTER_SIZE);
    dynamic = ins_be32(head + F_TYPE) != VHD_FIXED;
    if (vhd_checksum(head, FOOTER_SIZE, F_CHECKSUM) != ins_be32(head + F_CHECKSUM)) {
        ins_check_logf(&c->log, "ERROR: footer copy at offset 0: checksum is wrong");
        corrupt(c);
    }
    if (!dynamic)
        return 0;
    if (!footer_sound(tail)) {
        ins_check_logf(&c->log, "ERROR: footer at the end of the file (offset "
                       "%llu) is missing or its checksum is wrong",
                       (unsigned long long)c->footer_pos);
        corrupt(c);
    } else if (memcmp(head, tail, FOOTER_SIZE) != 0) {
        ins_check_logf(&c->log, "ERROR: footer copy at offset 0 differs from the "
                       "footer at the end of the file");
        corrupt(c);
    }
    return 1;
}

static void check_fixed(struct vpc_check *c)
{
    uint64_t size = ins_be64(c->footer + F_CURRENT_SIZE);

    if (c->footer_pos < size) {
        ins_check_logf(&c->log, "ERROR: fixed disk of %llu bytes, but its file "
                       "holds only %llu bytes before the footer",
                       (unsigned long long)size,
                       (unsigned long long)c->footer_pos);
        corrupt(c);
    }
    c->res->image_end_offset = (int64_t)c->flen;
}

/* The dynamic header; returns INS_OK when the BAT can be walked. */
static int check_dyn_header(struct vpc_check *c)
{
    uint64_t bat_bytes;

    c->dyn_off = ins_be64(c->footer + F_DATA_OFFSET);
    /* open already read it and checked its cookie and block size. */
    ins_read_zfill(c->img->file, c->dyn, sizeof(c->dyn), c->dyn_off);
    if (vhd_checksum(c->dyn, DYN_HEADER_SIZE, D_CHECKSUM) !=
        ins_be32(c->dyn + D_CHECKSUM)) {
        ins_check_logf(&c->log, "ERROR: dynamic header checksum is wrong");
        corrupt(c);
    }
    if (c->dyn_off < FOOTER_SIZE || c->dyn_off > c->footer_pos ||
        c->footer_pos - c->dyn_off < DYN_HEADER_SIZE) {
        ins_check_logf(&c->log, "ERROR: dynamic header at offset %llu overlaps a "
                       "footer or lies outside the file",
                       (unsigned long long)c->dyn_off);
        corrupt(c);
    }
    c->bat_off = ins_be64(c->dyn + D_TABLE_OFFSET);
    c->entries = ins_be32(c->dyn + D_MAX_ENTRIES);
    c->block_size = ins_be32(c->dyn + D_BLOCK_SIZE);
    c->bitmap_size = ((c->block_size / (8 * 512)) + 511) & ~511u;
    bat_bytes = ((uint64_t)c->entries * 4 + 511) & ~(uint64_t)511;
    if (c->bat_off < FOOTER_SIZE || c->bat_off > c->footer_pos ||
        c->footer_pos - c->bat_off < bat_bytes) {
        ins_check_logf(&c->log, "ERROR: BAT (offset %llu, %u entries) overlaps a "
                       "footer or lies outside the file",
                       (unsigned long long)c->bat_off, c->entries);
        corrupt(c);
        return INS_EINVAL;
    }
    c->bat_end = c->bat_off + bat_bytes;
    if (c->bat_off < c->dyn_off + DYN_HEADER_SIZE &&
        c->dyn_off < c->bat_end) {
        ins_check_logf(&c->log, "ERROR: BAT overlaps the dynamic header");
        corrupt(c);
    }
    return INS_OK;
}

static int overlaps(uint64_t s1, uint64_t l1, uint64_t s2, uint64_t l2)
{
    return s1 < s2 + l2 && s2 < s1 + l1;
}

/* One allocated BAT entry: inside the file, clear of the metadata. */
static void check_block(struct vpc_check *c, uint32_t i, uint32_t e)
{
    uint64_t start = (uint64_t)e * 512;
    uint64_t len = (uint64_t)c->bitmap_size + c->block_size;
    struct vpc_block *nb;

    if (start > c->footer_pos || c->footer_pos - start < len) {
        ins_check_logf(&c->log, "ERROR: block %u at offset %llu %s after the end "
                       "of the data (footer at %llu)", i,
                       (unsigned long long)start,
                       start >= c->footer_pos ? "points" : "ends",
                       (unsigned long long)c->footer_pos);
        corrupt(c);
        return;
    }
    if (overlaps(start, len, 0, FOOTER_SIZE) ||
        overlaps(start, len, c->dyn_off, DYN_HEADER_SIZE) ||
        overlaps(start, len, c->bat_off, c->bat_end - c->bat_off)) {
        ins_check_logf(&c->log, "ERROR: block %u at offset %llu overlaps the "
                       "image's metadata", i, (unsigned long long)start);
        corrupt(c);
        return;
    }
    nb = ins_check_grow(c->ctx, c->blocks, &c->cap_blocks, c->n_blocks,
                        sizeof(*nb), MAX_BLOCKS);
    if (!nb) {
        c->too_many = 1;
        return;
    }
    c->blocks = nb;
    c->blocks[c->n_blocks].start = start;
    c->blocks[c->n_blocks].index = i;
    c->n_blocks++;
}

static int walk_bat(struct vpc_check *c)
{
    uint64_t bytes = (uint64_t)c->entries * 4, done;
    uint64_t virt_blocks = (c->img->virtual_size + c->block_size - 1) / c->block_size;
    int64_t prev_end = -1;
    uint8_t *chunk = ins_malloc(c->ctx, BAT_CHUNK);

    if (!chunk)
        return ins_error(c->ctx, INS_ENOMEM, "Out of memory");
    for (done = 0; done < bytes; done += BAT_CHUNK) {
        size_t n = bytes - done < BAT_CHUNK ? (size_t)(bytes - done) : BAT_CHUNK, j;

        ins_read_zfill(c->img->file, chunk, n, c->bat_off + done);
        for (j = 0; j + 4 <= n; j += 4) {
            uint32_t i = (uint32_t)((done + j) / 4), e = ins_be32(chunk + j);
            uint64_t start = (uint64_t)e * 512;

            if (e == BAT_UNUSED)
                continue;
            check_block(c, i, e);
            c->res->allocated_clusters++;
            if (prev_end >= 0 && (int64_t)start != prev_end)
                c->res->fragmented_clusters++;
            prev_end = (int64_t)(start + c->bitmap_size + c->block_size);
        }
    }
    ins_free(c->ctx, chunk);
    c->res->total_clusters = (int64_t)(virt_blocks > c->entries ? virt_blocks
                                                                : c->entries);
    return INS_OK;
}

static int cmp_block(const void *a, const void *b)
{
    const struct vpc_block *x = a, *y = b;

    return x->start < y->start ? -1 : x->start > y->start;
}

/* Overlapping blocks, leaks (block-sized gaps), and the image's end. */
static void check_layout(struct vpc_check *c)
{
    uint64_t len = (uint64_t)c->bitmap_size + c->block_size;
    uint64_t meta_end = c->bat_end, end, gap;
    size_t k;

    if (c->dyn_off + DYN_HEADER_SIZE > meta_end)
        meta_end = c->dyn_off + DYN_HEADER_SIZE;
    end = meta_end;
    if (c->too_many) {
        ins_check_logf(&c->log, "ERROR: too many allocated blocks to check them "
                       "for overlaps");
        c->res->check_errors++;
        return;
    }
    ins_check_sort(c->blocks, c->n_blocks, sizeof(*c->blocks), cmp_block);
    for (k = 0; k < c->n_blocks; k++) {
        const struct vpc_block *b = &c->blocks[k];

        /* Sorted by start, all of one length: b overlaps the block
         * before it, or nothing. */
        if (k > 0 && b->start < c->blocks[k - 1].start + len) {
            ins_check_logf(&c->log, "ERROR: block %u at offset %llu overlaps "
                           "block %u", b->index, (unsigned long long)b->start,
                           c->blocks[k - 1].index);
            corrupt(c);
        } else if (b->start > end && (gap = (b->start - end) / len) > 0) {
            ins_check_logf(&c->log, "Leaked space at offset %llu: %llu bytes",
                           (unsigned long long)end,
                           (unsigned long long)(b->start - end));
            c->res->leaks += (int64_t)gap;
        }
        if (b->start + len > end)
            end = b->start + len;
    }
    if (c->footer_pos > end && (gap = (c->footer_pos - end) / len) > 0) {
        ins_check_logf(&c->log, "Leaked space at offset %llu: %llu bytes",
                       (unsigned long long)end,
                       (unsigned long long)(c->footer_pos - end));
        c->res->leaks += (int64_t)gap;
    }
    c->res->image_end_offset = (int64_t)(end + FOOTER_SIZE);
}

static int vpc_check_all(struct vpc_check *c)
{
    int rc;

    if (!check_footers(c)) {
        check_fixed(c);
        return INS_OK;
    }
    if (check_dyn_header(c) < 0)
        return INS_OK;
    rc = walk_bat(c);
    if (rc == INS_OK)
        check_layout(c);
    return rc;
}

int ins_vpc_check(struct ins_image *img, unsigned fix,
                  struct ins_check_result *res)
{
    struct ins_ctx *ctx = img->ctx;
    struct vpc_check c;
    int rc;

    if (ins_check_unsafe(img))
        return ins_error(ctx, INS_ENOTSUP,
                         "This image format does not support checks");
    if (fix)
        return ins_error(ctx, INS_ENOTSUP, "instar cannot repair vpc images "
                         "(run check without -r to see the problems)");
    memset(&c, 0, sizeof(c));
    c.img = img;
    c.ctx = ctx;
    c.res = res;
    c.flen = (img->file->size + 511) & ~(uint64_t)511;
    ins_check_log_init(&c.log, ctx);
    rc = vpc_check_all(&c);
    ins_check_log_free(&c.log);
    ins_free(ctx, c.blocks);
    return rc;
}

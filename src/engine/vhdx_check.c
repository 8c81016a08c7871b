/*
 * vhdx_check.c - qemu-img check for VHDX images.
 *
 * qemu's vhdx_co_check (the same in 7.2 and 10.0) runs
 * vhdx_check_bat_entries: every fully present payload block must start
 * inside the file and end inside it (a partial last block is allowed),
 * and - through a counter that only advances on present entries, so that
 * every (chunk_ratio + 1)th present block escapes - must not overlap the
 * log or a region.  A log replayed at open (-r, read-write) counts as one
 * fixed corruption.  With --unsafe-quirks we do exactly that, with qemu's
 * messages.
 *
 * The safe default checks more:
 *   - both headers (signature, version, CRC-32C): the one qemu ignores
 *     must be sound too, and the log it names must lie inside the file;
 *   - both copies of the region table (CRC-32C, identical), regions
 *     inside the file and out of the header section;
 *   - the metadata table: signature, entries inside the metadata region;
 *   - a log that still needs replaying (reported instead of failing);
 *   - every BAT entry: known state, present blocks inside the file, clear
 *     of the headers, log and regions, and of each other;
 * Present blocks are collected (12 bytes each, capped) and sorted to find
 * overlaps; the BAT itself is streamed.
 */
#include "fmt_check.h"

#include <string.h>

#define KiB 1024u
#define MiB (1024u * 1024u)
#define HEADER1_OFFSET      (64 * KiB)
#define HEADER2_OFFSET      (128 * KiB)
#define RT1_OFFSET          (192 * KiB)
#define RT2_OFFSET          (256 * KiB)
#define HEADER_SIZE         (4 * KiB)
#define RT_SIZE             (64 * KiB)
#define META_TABLE_SIZE     (64 * KiB)
#define RT_MAX_ENTRIES      2047

#define BAT_STATE_MASK      0x07
#define BAT_OFFSET_MASK     0xFFFFFFFFFFF00000ULL
#define PAYLOAD_NOT_PRESENT       0
#define PAYLOAD_UNDEFINED         1
#define PAYLOAD_ZERO              2
#define PAYLOAD_UNMAPPED          3
#define PAYLOAD_UNMAPPED_V095     5
#define PAYLOAD_FULLY_PRESENT     6
#define PAYLOAD_PARTIALLY_PRESENT 7
#define SB_BLOCK_PRESENT          6
#define SECTOR_BITMAP_SIZE        (1 * MiB)

#define BAT_CHUNK           (64 * KiB)
#define MAX_BLOCKS          (16u << 20)

/* A region in qemu's registration order: the log, then the table's. */
struct vregion {
    uint64_t start, end;
};

struct vblock {
    uint64_t start, len;
    uint64_t index;
};

struct vhdx_check {
    struct ins_image *img;
    struct ins_ctx *ctx;
    struct ins_check_result *res;
    struct vhdx_layout l;
    int safe;
    uint64_t fsize;             /* qemu's file length: whole sectors */
    uint64_t disk_bytes;
    struct vregion regions[RT_MAX_ENTRIES + 1];
    size_t n_regions;
    struct vblock *blocks;
    size_t n_blocks, cap_blocks;
    int too_many;
    int64_t n_alloc, n_frag;
    uint64_t prev_end;
    struct ins_check_log log;   /* stderr lines, batched */
};

/* CRC-32C (Castagnoli), bitwise: the check reads a few hundred KiB of
 * metadata at most, so speed does not matter here. */
static uint32_t crc32c(uint32_t crc, const uint8_t *p, size_t n)
{
    int k;

    while (n--) {
        crc ^= *p++;
        for (k = 0; k < 8; k++)
            crc = (crc >> 1) ^ (0x82f63b78u & (0u - (crc & 1)));
    }
    return crc;
}

/* The checksum field at offset 4 counts as zero. */
static int crc_ok(const uint8_t *buf, size_t n)
{
    static const uint8_t zero[4];
    uint32_t crc = crc32c(0xffffffffu, buf, 4);

    crc = crc32c(crc, zero, 4);
    crc = ~crc32c(crc, buf + 8, n - 8);
    return crc == ins_le32(buf + 4);
}

static void corrupt(struct vhdx_check *c)
{
    c->res->corruptions++;
}

/* ---- qemu's vhdx_check_bat_entries ---- */

/* vhdx_region_check: the most recently registered overlapping region. */
static int region_hit(const struct vhdx_check *c, uint64_t start,
                      uint64_t length, const struct vregion **hit)
{
    uint64_t end = start + length;
    size_t i = c->n_regions;

    while (i-- > 0) {
        const struct vregion *r = &c->regions[i];

        if (!(start >= r->end || end <= r->start)) {
            *hit = r;
            return 1;
        }
    }
    return 0;
}

static void qemu_entry(struct vhdx_check *c, uint64_t i, uint64_t e,
                       uint64_t *payblocks)
{
    uint64_t offset = e & BAT_OFFSET_MASK, rest;
    uint32_t block_length;
    const struct vregion *r;

    if ((e & BAT_STATE_MASK) != PAYLOAD_FULLY_PRESENT)
        return;
    /* i counts sector bitmap entries too, as in qemu. */
    rest = c->disk_bytes - i * c->l.block_size;
    block_length = rest < c->l.block_size ? (uint32_t)rest : c->l.block_size;
    if (offset > (uint64_t)INT64_MAX - c->l.block_size) {
        ins_check_log_report(&c->log, "VHDX BAT entry %llu offset overflow.",
                             (unsigned long long)i);
        corrupt(c);
    }
    if (offset >= c->fsize) {
        ins_check_log_report(&c->log, "VHDX BAT entry %llu start offset %llu points "
                             "after end of file (%lld). Image has probably been "
                             "truncated.", (unsigned long long)i,
                             (unsigned long long)offset, (long long)c->fsize);
        corrupt(c);
    } else if (offset + block_length > c->fsize) {
        ins_check_log_report(&c->log, "VHDX BAT entry %llu end offset %llu points "
                             "after end of file (%lld). Image has probably been "
                             "truncated.", (unsigned long long)i,
                             (unsigned long long)(offset + block_length - 1),
                             (long long)c->fsize);
        corrupt(c);
    }
    if ((*payblocks)--) {
        if (region_hit(c, offset, c->l.block_size, &r)) {
            ins_check_log_report(&c->log, "VHDX region %llu-%llu overlaps with region "
                                 "%llu-%llu", (unsigned long long)offset,
                                 (unsigned long long)(offset + c->l.block_size),
                                 (unsigned long long)r->start,
                                 (unsigned long long)r->end);
            corrupt(c);
        }
    } else {
        *payblocks = c->l.chunk_ratio;
    }
}

/* ---- safe mode: the metadata ---- */

static int header_sound(const uint8_t *h)
{
    return crc_ok(h, HEADER_SIZE) && memcmp(h, "head", 4) == 0 &&
           ins_le16(h + 66) == 1;
}

static void check_headers(struct vhdx_check *c, uint8_t *buf)
{
    static const uint64_t where[2] = { HEADER1_OFFSET, HEADER2_OFFSET };
    int k;

    for (k = 0; k < 2; k++) {
        ins_read_zfill(c->img->file, buf, HEADER_SIZE, where[k]);
        if (!header_sound(buf)) {
            ins_check_logf(&c->log, "ERROR: VHDX header %d (offset %llu) is "
                           "invalid (signature, version or CRC-32C)", k + 1,
                           (unsigned long long)where[k]);
            corrupt(c);
        }
    }
    if (c->l.log_length &&
        (c->l.log_offset > c->fsize ||
         c->fsize - c->l.log_offset < c->l.log_length)) {
        ins_check_logf(&c->log, "ERROR: VHDX log %llu-%llu lies beyond the end "
                       "of the file (%llu)", (unsigned long long)c->l.log_offset,
                       (unsigned long long)(c->l.log_offset + c->l.log_length),
                       (unsigned long long)c->fsize);
        corrupt(c);
    }
    if (c->l.log_dirty) {
        ins_check_logf(&c->log, "ERROR: VHDX log holds entries that were never "
                       "replayed (the metadata checked here may be stale)");
        corrupt(c);
    }
}

/* Both region table copies; registers the regions in qemu's order. */
static void check_region_tables(struct vhdx_check *c, uint8_t *rt1,
                                uint8_t *rt2)
{
    uint32_t count, i;

    ins_read_zfill(c->img->file, rt1, RT_SIZE, RT1_OFFSET);
    ins_read_zfill(c->img->file, rt2, RT_SIZE, RT2_OFFSET);
    /* open checked the first copy; qemu never reads the second. */
    if (!c->safe) {
        /* nothing */
    } else if (!crc_ok(rt2, RT_SIZE) || memcmp(rt2, "regi", 4) != 0) {
        ins_check_logf(&c->log, "ERROR: VHDX region table copy 2 (offset %u) "
                       "is invalid (signature or CRC-32C)", RT2_OFFSET);
        corrupt(c);
    } else if (memcmp(rt1, rt2, RT_SIZE) != 0) {
        ins_check_logf(&c->log, "ERROR: VHDX region table copies at %u and %u "
                       "differ", RT1_OFFSET, RT2_OFFSET);
        corrupt(c);
    }
    count = ins_le32(rt1 + 8);
    for (i = 0; i < count && i < RT_MAX_ENTRIES; i++) {
        const uint8_t *e = rt1 + 16 + 32 * i;
        uint64_t off = ins_le64(e + 16);
        uint32_t len = ins_le32(e + 24);

        if (c->safe && (off < MiB || off > c->fsize || c->fsize - off < len)) {
            ins_check_logf(&c->log, "ERROR: VHDX region %u (%llu-%llu) lies in "
                           "the header section or beyond the end of the file",
                           i, (unsigned long long)off,
                           (unsigned long long)(off + len));
            corrupt(c);
        }
        c->regions[c->n_regions].start = off;
        c->regions[c->n_regions].end = off + len;
        c->n_regions++;
    }
}

/* The metadata table: entries inside the metadata region. */
static void check_metadata(struct vhdx_check *c, uint8_t *buf)
{
    uint64_t region_len = 0;
    uint32_t count, i;
    size_t k;

    for (k = 1; k < c->n_regions; k++)
        if (c->regions[k].start == c->l.meta_offset)
            region_len = c->regions[k].end - c->regions[k].start;
    ins_read_zfill(c->img->file, buf, META_TABLE_SIZE, c->l.meta_offset);
    count = ins_le16(buf + 10);
    for (i = 0; i < count && 32 + 32 * (uint64_t)(i + 1) <= META_TABLE_SIZE; i++) {
        const uint8_t *e = buf + 32 + 32 * i;
        uint32_t off = ins_le32(e + 16), len = ins_le32(e + 20);

        if (len == 0)
            continue;
        if (off < META_TABLE_SIZE || off > region_len ||
            region_len - off < len) {
            ins_check_logf(&c->log, "ERROR: VHDX metadata item %u (%u bytes at "
                           "%u) lies outside the metadata region (%llu bytes)",
                           i, len, off, (unsigned long long)region_len);
            corrupt(c);
        }
    }
}

/* ---- safe mode: the BAT ---- */

static void add_block(struct vhdx_check *c, uint64_t i, uint64_t start,
                      uint64_t len)
{
    struct vblock *nb = ins_check_grow(c->ctx, c->blocks, &c->cap_blocks,
                                       c->n_blocks, sizeof(*nb), MAX_BLOCKS);

    if (!nb) {
        c->too_many = 1;
        return;
    }
    c->blocks = nb;
    c->blocks[c->n_blocks].start = start;
    c->blocks[c->n_blocks].len = len;
    c->blocks[c->n_blocks].index = i;
    c->n_blocks++;
}

/* A payload BAT state: 1 data in the file, 0 none, -1 invalid here
 * (partially present blocks belong to differencing images only). */
static int payload_kind(unsigned state, int has_parent)
{
    switch (state) {
    case PAYLOAD_NOT_PRESENT:
    case PAYLOAD_UNDEFINED:
    case PAYLOAD_ZERO:
    case PAYLOAD_UNMAPPED:
    case PAYLOAD_UNMAPPED_V095:
        return 0;
    case PAYLOAD_FULLY_PRESENT:
        return 1;
    case PAYLOAD_PARTIALLY_PRESENT:
        return has_parent ? 1 : -1;
    default:
        return -1;
    }
}

static void safe_entry(struct vhdx_check *c, uint64_t i, uint64_t e)
{
    unsigned state = (unsigned)(e & BAT_STATE_MASK);
    uint64_t offset = e & BAT_OFFSET_MASK, len, rest;
    int bitmap = (i + 1) % (c->l.chunk_ratio + 1) == 0;
    const struct vregion *r;

    if (bitmap) {
        if (state == 0)
            return;
        if (state != SB_BLOCK_PRESENT || !c->l.has_parent) {
            ins_check_logf(&c->log, "ERROR: VHDX BAT entry %llu: sector bitmap "
                           "state %u in %s image", (unsigned long long)i, state,
                           c->l.has_parent ? "a differencing" : "a non-differencing");
            corrupt(c);
            return;
        }
        len = SECTOR_BITMAP_SIZE;
    } else {
        int kind = payload_kind(state, c->l.has_parent);

        if (kind == 0)
            return;
        if (kind < 0) {
            ins_check_logf(&c->log, "ERROR: VHDX BAT entry %llu: invalid payload "
                           "block state %u", (unsigned long long)i, state);
            corrupt(c);
            return;
        }
        /* A partial last block is tolerated, as qemu does. */
        len = c->l.block_size;
        rest = c->disk_bytes - (i - i / (c->l.chunk_ratio + 1)) * c->l.block_size;
        if (rest < len)
            len = rest;
        c->n_alloc++;
        if (c->n_alloc > 1 && offset != c->prev_end)
            c->n_frag++;
        c->prev_end = offset + c->l.block_size;
    }
    if (offset >= c->fsize || c->fsize - offset < len) {
        ins_check_log_report(&c->log, "VHDX BAT entry %llu %s offset %llu points after "
                             "end of file (%llu). Image has probably been truncated.",
                             (unsigned long long)i,
                             offset >= c->fsize ? "start" : "end",
                             (unsigned long long)(offset >= c->fsize ? offset
                             : offset + len - 1),
                             (unsigned long long)c->fsize);
        corrupt(c);
        return;
    }
    if (offset < MiB || region_hit(c, offset, len, &r)) {
        ins_check_logf(&c->log, "ERROR: VHDX BAT entry %llu: block %llu-%llu "
                       "overlaps the %s", (unsigned long long)i,
                       (unsigned long long)offset,
                       (unsigned long long)(offset + len),
                       offset < MiB ? "header section" :
                       r == &c->regions[0] ? "log" : "metadata regions");
        corrupt(c);
        return;
    }
    add_block(c, i, offset, len);
}

static int cmp_block(const void *a, const void *b)
{
    const struct vblock *x = a, *y = b;

    return x->start < y->start ? -1 : x->start > y->start;
}

/* Overlapping blocks.  No leaks: qemu itself leaves unreferenced space
 * (fixed images with zero-state blocks, 1 MiB alignment of new blocks),
 * and VHDX has no allocation accounting that would make it wrong. */
static void check_blocks(struct vhdx_check *c)
{
    uint64_t end = MiB, cover_end = 0, cover_index = 0;
    size_t k;

    if (c->too_many) {
        ins_check_logf(&c->log, "ERROR: too many allocated blocks to check "
                       "them for overlaps");
        c->res->check_errors++;
        return;
    }
    for (k = 0; k < c->n_regions; k++)
        if (c->regions[k].end > end && c->regions[k].end <= c->fsize)
            end = c->regions[k].end;
    ins_check_sort(c->blocks, c->n_blocks, sizeof(*c->blocks), cmp_block);
    for (k = 0; k < c->n_blocks; k++) {
        const struct vblock *b = &c->blocks[k];

        /* Sorted by start: b overlaps an earlier block exactly when it
         * starts before the furthest end seen so far. */
        if (k > 0 && b->start < cover_end) {
            ins_check_logf(&c->log, "ERROR: VHDX BAT entries %llu and %llu "
                           "share file space at offset %llu",
                           (unsigned long long)cover_index,
                           (unsigned long long)b->index,
                           (unsigned long long)b->start);
            corrupt(c);
        }
        if (k == 0 || b->start + b->len > cover_end) {
            cover_end = b->start + b->len;
            cover_index = b->index;
        }
        if (b->start + b->len > end)
            end = b->start + b->len;
    }
    if (c->ctx->flags & INS_F_EXTRA_DETAIL) {
        c->res->image_end_offset = (int64_t)end;
        c->res->total_clusters = (int64_t)((c->disk_bytes + c->l.block_size - 1) /
                                           c->l.block_size);
        c->res->allocated_clusters = c->n_alloc;
        c->res->fragmented_clusters = c->n_frag;
    }
}

static int walk_bat(struct vhdx_check *c)
{
    uint64_t bytes = (uint64_t)c->l.bat_entries * 8, done, payblocks = c->l.chunk_ratio;
    uint8_t *chunk = ins_malloc(c->ctx, BAT_CHUNK);

    if (!chunk)
        return ins_error(c->ctx, INS_ENOMEM, "Out of memory");
    for (done = 0; done < bytes; done += BAT_CHUNK) {
        size_t n = bytes - done < BAT_CHUNK ? (size_t)(bytes - done) : BAT_CHUNK, j;

        ins_read_zfill(c->img->file, chunk, n, c->l.bat_offset + done);
        for (j = 0; j + 8 <= n; j += 8) {
            uint64_t i = (done + j) / 8, e = ins_le64(chunk + j);

            if (c->safe)
                safe_entry(c, i, e);
            else
                qemu_entry(c, i, e, &payblocks);
        }
    }
    ins_free(c->ctx, chunk);
    return INS_OK;
}

int ins_vhdx_check(struct ins_image *img, unsigned fix,
                   struct ins_check_result *res)
{
    struct ins_ctx *ctx = img->ctx;
    struct vhdx_check *c = ins_calloc(ctx, 1, sizeof(*c));
    uint8_t *buf = ins_malloc(ctx, 2 * RT_SIZE);
    int rc;

    /* qemu's check repairs nothing itself: -r only opens read-write,
     * which replays the log (open refuses what we cannot replay). */
    (void)fix;
    if (!c || !buf) {
        ins_free(ctx, c);
        ins_free(ctx, buf);
        return ins_error(ctx, INS_ENOMEM, "Out of memory");
    }
    c->img = img;
    c->ctx = ctx;
    c->res = res;
    c->safe = !ins_check_unsafe(img);
    ins_vhdx_layout(img, &c->l);
    /* qemu counts a log replayed at open as one fixed corruption. */
    if (c->l.log_replayed)
        res->corruptions_fixed++;
    c->fsize = (img->file->size + 511) & ~(uint64_t)511;
    c->disk_bytes = img->virtual_size;
    /* The log is the first region qemu registers. */
    c->regions[0].start = c->l.log_offset;
    c->regions[0].end = c->l.log_offset + c->l.log_length;
    c->n_regions = 1;
    ins_check_log_init(&c->log, ctx);
    if (c->safe)
        check_headers(c, buf);
    check_region_tables(c, buf, buf + RT_SIZE);
    if (c->safe)
        check_metadata(c, buf);
    rc = walk_bat(c);
    if (rc == INS_OK && c->safe)
        check_blocks(c);
    ins_check_log_free(&c->log);
    ins_free(ctx, c->blocks);
    ins_free(ctx, c);
    ins_free(ctx, buf);
    return rc;
}

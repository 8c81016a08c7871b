/*
 * vmdk_check.c - qemu-img check for vmdk images.
 *
 * qemu's vmdk_co_check (the same in 7.2 and 10.0) walks the guest disk
 * one grain at a time and stops at the first grain whose offset is at or
 * past the end of its extent file: it prints one "ERROR: ..." line, counts
 * one corruption and fails the check (qemu-img: "Check failed: Invalid
 * argument", exit 1).  A flat extent is one "grain" at its start offset.
 * With --unsafe-quirks we do exactly that.
 *
 * The safe default looks at every sparse VMDK4 extent (monolithicSparse,
 * streamOptimized, twoGbMaxExtentSparse's files) as a whole and keeps
 * going after a problem:
 *   - grain tables inside the file; the redundant grain directory and its
 *     tables identical to the primary ones;
 *   - every grain (compressed ones through their marker) inside the file;
 *   - grains, grain tables, directories, header and descriptor never
 *     sharing file space;
 *   - leaks: grain-sized stretches after the metadata area that nothing
 *     references (not for compressed extents, whose grains vary in size);
 *   - flat extents: the file holds all of the extent.
 * Other extents (VMDK3, seSparse) get qemu's per-grain test, without
 * stopping at the first problem.  The ranges that must not overlap are
 * collected per extent (16 bytes each, capped) and sorted.
 */
#include "fmt_check.h"
#include "vmdk.h"

#include <string.h>

#define SECTOR          512u
#define MAGIC_KDMV      0x564d444bu     /* "KDMV" read little-endian */
#define MAX_RANGES      (8u << 20)
#define MAX_GT_BYTES    (512u * 4)      /* open refuses more than 512 GTEs */
#define CHUNK           65536u

enum { R_META, R_GT, R_RGT, R_GRAIN };

static const char *const kind_name[] = {
    "the header, descriptor or a grain directory", "a grain table",
    "a redundant grain table", "a grain",
};

struct range {
    uint64_t start;
    uint32_t len;
    uint32_t kind;
};

struct vmdk_check {
    struct ins_image *img;
    struct vmdk_image *s;
    struct ins_ctx *ctx;
    struct ins_check_result *res;
    struct range *ranges;
    size_t n_ranges, cap_ranges;
    int too_many;
    int64_t n_alloc, n_frag, n_total, n_compressed;
    uint64_t prev_end;
    uint64_t end_offset;        /* of the image's own file */
    struct ins_check_log log;   /* stderr lines, batched */
};

static void corrupt(struct vmdk_check *c)
{
    c->res->corruptions++;
}

/* qemu's file length: whole sectors. */
static uint64_t file_len(const struct ins_bdev *bd)
{
    return (bd->size + SECTOR - 1) / SECTOR * SECTOR;
}

/* ---- qemu's walk ---- */

/* find_extent(): the first extent ending after sector. */
static struct vmdk_extent *extent_at(struct vmdk_image *s, int64_t sector)
{
    size_t i;

    for (i = 0; i < s->n_extents; i++)
        if (sector < s->extents[i].end_sector)
            return &s->extents[i];
    return NULL;
}

/*
 * vmdk_co_check.  Returns INS_OK, or the error qemu's check returns:
 * -EINVAL ("Invalid argument"), or VMDK_ERROR, which is -1: qemu-img
 * prints strerror(1), "Operation not permitted" (INS_EREFUSED's text).
 */
static int qemu_walk(struct vmdk_check *c)
{
    struct vmdk_image *s = c->s;
    int64_t total = s->n_extents ? s->extents[s->n_extents - 1].end_sector : 0;
    int64_t sector = 0;
    uint64_t off;
    int rc;

    for (;;) {
        struct vmdk_extent *e;

        if (sector >= total)
            return INS_OK;
        e = extent_at(s, sector);
        if (!e) {
            ins_check_logf(&c->log, "ERROR: could not find extent for sector "
                           "%lld", (long long)sector);
            rc = ins_error(c->ctx, INS_EINVAL, "Invalid argument");
            break;
        }
        rc = ins_vmdk_get_cluster(c->img, e, (uint64_t)sector * SECTOR, &off);
        if (rc < 0 || rc == INS_VMDK_ERROR) {
            ins_check_logf(&c->log, "ERROR: could not get cluster_offset for "
                           "sector %lld", (long long)sector);
            rc = ins_error(c->ctx, INS_EREFUSED, "Operation not permitted");
            break;
        }
        if (rc == INS_VMDK_OK && off >= file_len(e->file)) {
            ins_check_logf(&c->log, "ERROR: cluster offset for sector %lld "
                           "points after EOF", (long long)sector);
            rc = ins_error(c->ctx, INS_EINVAL, "Invalid argument");
            break;
        }
        /* qemu's int64_t arithmetic; a zero-sized grain would loop. */
        if (e->cluster_sectors <= 0) {
            rc = ins_error(c->ctx, INS_EINVAL, "Invalid argument");
            break;
        }
        sector += e->cluster_sectors;
    }
    c->res->corruptions++;
    return rc;
}

/* ---- safe mode ---- */

static void add_range(struct vmdk_check *c, uint64_t start, uint64_t len,
                      unsigned kind)
{
    struct range *nr;

    if (len == 0)
        return;
    nr = ins_check_grow(c->ctx, c->ranges, &c->cap_ranges, c->n_ranges,
                        sizeof(*nr), MAX_RANGES);
    if (!nr) {
        c->too_many = 1;
        return;
    }
    c->ranges = nr;
    c->ranges[c->n_ranges].start = start;
    c->ranges[c->n_ranges].len = len > UINT32_MAX ? UINT32_MAX : (uint32_t)len;
    c->ranges[c->n_ranges].kind = kind;
    c->n_ranges++;
}

static uint64_t round_sector(uint64_t n)
{
    return (n + SECTOR - 1) / SECTOR * SECTOR;
}

/* The file bytes of the grain at byte offset start. */
static uint64_t grain_len(struct vmdk_check *c, const struct vmdk_extent *e,
                          uint64_t start)
{
    uint8_t m[12];

    if (!e->compressed)
        return (uint64_t)e->cluster_sectors * SECTOR;
    if (!e->has_marker)
        return SECTOR;      /* at least its first sector must be there */
    if (ins_read_zfill(e->file, m, sizeof(m), start) < 0)
        return SECTOR;
    (void)c;
    return round_sector(12 + (uint64_t)ins_le32(m + 8));
}

/* One grain table's entries: grains inside the file, counted. */
static void check_gt(struct vmdk_check *c, const struct vmdk_extent *e,
                     uint32_t l1_index, const uint8_t *gt)
{
    uint64_t flen = file_len(e->file), grain_bytes = (uint64_t)e->cluster_sectors * SECTOR;
    uint32_t j;

    for (j = 0; j < e->l2_size; j++) {
        uint64_t gi = (uint64_t)l1_index * e->l2_size + j;
        uint64_t sector = (uint64_t)(e->end_sector - e->sectors) +
                          gi * (uint64_t)e->cluster_sectors;
        uint32_t g = ins_le32(gt + 4 * (size_t)j);
        uint64_t start = (uint64_t)g * SECTOR, len;

        if (g == 0 || (g == 1 && e->has_zero_grain))
            continue;
        if (gi * (uint64_t)e->cluster_sectors >= (uint64_t)e->sectors) {
            ins_check_logf(&c->log, "ERROR: grain table %u entry %u maps a grain "
                           "past the end of the extent", l1_index, j);
            corrupt(c);
            continue;
        }
        if (start >= flen) {
            ins_check_logf(&c->log, "ERROR: cluster offset for sector %llu points "
                           "after EOF", (unsigned long long)sector);
            corrupt(c);
            continue;
        }
        len = grain_len(c, e, start);
        if (flen - start < len) {
            ins_check_logf(&c->log, "ERROR: grain for sector %llu (offset %llu, "
                           "%llu bytes) ends after EOF", (unsigned long long)sector,
                           (unsigned long long)start, (unsigned long long)len);
            corrupt(c);
            continue;
        }
        add_range(c, start, len, R_GRAIN);
        c->n_alloc++;
        if (c->n_alloc > 1 && start != c->prev_end)
            c->n_frag++;
        c->prev_end = start + (e->compressed ? len : grain_bytes);
        if (e->compressed)
            c->n_compressed++;
        if (e->is_image_file && start + len > c->end_offset)
            c->end_offset = start + len;
    }
}

/* Reads the grain table at sector l2 into buf; 0 when it lies in the file. */
static int read_gt(struct vmdk_check *c, const struct vmdk_extent *e,
                   uint32_t l1_index, uint32_t l2, int redundant, uint8_t *buf)
{
    uint64_t start = (uint64_t)l2 * SECTOR, bytes = (uint64_t)e->l2_size * 4;
    uint64_t flen = file_len(e->file);

    if (start >= flen || flen - start < bytes) {
        ins_check_logf(&c->log, "ERROR: %sgrain table %u at offset %llu lies "
                       "beyond the end of the file", redundant ? "redundant " : "",
                       l1_index, (unsigned long long)start);
        corrupt(c);
        return -1;
    }
    add_range(c, start, round_sector(bytes), redundant ? R_RGT : R_GT);
    return ins_read_zfill(e->file, buf, (size_t)bytes, start) < 0 ? -1 : 0;
}

/* The grain directory (and its redundant copy) and every table. */
static int walk_directory(struct vmdk_check *c, const struct vmdk_extent *e)
{
    uint64_t gd_bytes = (uint64_t)e->l1_size * 4;
    uint8_t *buf = ins_malloc(c->ctx, 2 * CHUNK + 2 * MAX_GT_BYTES);
    uint8_t *gd, *rgd, *gt, *rgt;
    uint64_t done;

    if (!buf)
        return ins_error(c->ctx, INS_ENOMEM, "Out of memory");
    gd = buf;
    rgd = buf + CHUNK;
    gt = rgd + CHUNK;
    rgt = gt + MAX_GT_BYTES;
    add_range(c, e->l1_table_offset, round_sector(gd_bytes), R_META);
    if (e->l1_backup_offset)
        add_range(c, e->l1_backup_offset, round_sector(gd_bytes), R_META);
    for (done = 0; done < gd_bytes; done += CHUNK) {
        size_t n = gd_bytes - done < CHUNK ? (size_t)(gd_bytes - done) : CHUNK, k;

        ins_read_zfill(e->file, gd, n, e->l1_table_offset + done);
        if (e->l1_backup_offset)
            ins_read_zfill(e->file, rgd, n, e->l1_backup_offset + done);
        for (k = 0; k < n; k += 4) {
            uint32_t i = (uint32_t)((done + k) / 4), l2 = ins_le32(gd + k);
            uint32_t rl2 = e->l1_backup_offset ? ins_le32(rgd + k) : 0;
            int have = l2 && read_gt(c, e, i, l2, 0, gt) == 0;

            if (have)
                check_gt(c, e, i, gt);
            if (!e->l1_backup_offset)
                continue;
            if (!l2 != !rl2) {
                ins_check_logf(&c->log, "ERROR: grain directory entry %u is %u, "
                               "its redundant copy %u", i, l2, rl2);
                corrupt(c);
            } else if (rl2 && read_gt(c, e, i, rl2, 1, rgt) == 0 && have &&
                       memcmp(gt, rgt, (size_t)e->l2_size * 4) != 0) {
                ins_check_logf(&c->log, "ERROR: redundant grain table %u differs "
                               "from grain table %u", i, i);
                corrupt(c);
            }
        }
    }
    ins_free(c->ctx, buf);
    return INS_OK;
}

static int cmp_range(const void *a, const void *b)
{
    const struct range *x = a, *y = b;

    return x->start < y->start ? -1 : x->start > y->start;
}

/* Shared file space, and leaks after the metadata area. */
static void check_ranges(struct vmdk_check *c, const struct vmdk_extent *e,
                         uint64_t data_start)
{
    uint64_t grain_bytes = (uint64_t)e->cluster_sectors * SECTOR;
    uint64_t cover_end = 0, flen = file_len(e->file), gap;
    unsigned cover_kind = R_META;
    size_t k;

    if (c->too_many) {
        ins_check_logf(&c->log, "ERROR: too many grains to check them for "
                       "overlaps");
        c->res->check_errors++;
        return;
    }
    ins_check_sort(c->ranges, c->n_ranges, sizeof(*c->ranges), cmp_range);
    for (k = 0; k < c->n_ranges; k++) {
        const struct range *r = &c->ranges[k];
        uint64_t from = cover_end > data_start ? cover_end : data_start;

        if (k > 0 && r->start < cover_end) {
            ins_check_logf(&c->log, "ERROR: %s at offset %llu overlaps %s",
                           kind_name[r->kind], (unsigned long long)r->start,
                           kind_name[cover_kind]);
            corrupt(c);
        } else if (!e->compressed && r->start > from &&
                   (gap = (r->start - from) / grain_bytes) > 0) {
            ins_check_logf(&c->log, "Leaked space at offset %llu: %llu bytes",
                           (unsigned long long)from,
                           (unsigned long long)(r->start - from));
            c->res->leaks += (int64_t)gap;
        }
        if (k == 0 || r->start + r->len > cover_end) {
            cover_end = r->start + r->len;
            cover_kind = r->kind;
        }
    }
    if (cover_end < data_start)
        cover_end = data_start;
    if (!e->compressed && flen > cover_end &&
        (gap = (flen - cover_end) / grain_bytes) > 0) {
        ins_check_logf(&c->log, "Leaked space at offset %llu: %llu bytes",
                       (unsigned long long)cover_end,
                       (unsigned long long)(flen - cover_end));
        c->res->leaks += (int64_t)gap;
    }
}

/* A sparse VMDK4 extent. */
static int check_sparse(struct vmdk_check *c, const struct vmdk_extent *e)
{
    uint8_t h[80];
    uint64_t data_start = 0;
    int rc;

    c->n_ranges = 0;
    c->too_many = 0;
    ins_read_zfill(e->file, h, sizeof(h), 0);
    add_range(c, 0, SECTOR, R_META);
    if (ins_le32(h) == MAGIC_KDMV) {
        /* Descriptor (sectors at 28, count at 36), overhead at 64. */
        add_range(c, ins_le64(h + 28) * SECTOR, ins_le64(h + 36) * SECTOR, R_META);
        data_start = ins_le64(h + 64) * SECTOR;
    }
    rc = walk_directory(c, e);
    if (rc == INS_OK)
        check_ranges(c, e, data_start);
    return rc;
}

static void check_flat(struct vmdk_check *c, size_t i, const struct vmdk_extent *e)
{
    uint64_t need = e->flat_start_offset, flen = file_len(e->file);

    if (e->sectors > 0)
        need += (uint64_t)e->sectors * SECTOR;
    if (need > flen) {
        ins_check_logf(&c->log, "ERROR: flat extent %zu needs %llu bytes of its "
                       "file, which has %llu", i, (unsigned long long)need,
                       (unsigned long long)flen);
        corrupt(c);
    }
}

/* Any other extent: qemu's per-grain test, without stopping. */
static void check_grains(struct vmdk_check *c, struct vmdk_extent *e)
{
    int64_t sector = e->end_sector - e->sectors;
    uint64_t off;
    int rc;

    if (e->cluster_sectors <= 0)
        return;
    for (; sector < e->end_sector; sector += e->cluster_sectors) {
        rc = ins_vmdk_get_cluster(c->img, e, (uint64_t)sector * SECTOR, &off);
        if (rc < 0 || rc == INS_VMDK_ERROR) {
            ins_check_logf(&c->log, "ERROR: could not get cluster_offset for "
                           "sector %lld", (long long)sector);
            corrupt(c);
        } else if (rc == INS_VMDK_OK && off >= file_len(e->file)) {
            ins_check_logf(&c->log, "ERROR: cluster offset for sector %lld "
                           "points after EOF", (long long)sector);
            corrupt(c);
        }
    }
}

static int safe_check(struct vmdk_check *c)
{
    struct vmdk_image *s = c->s;
    size_t i;
    int rc = INS_OK;

    for (i = 0; i < s->n_extents && rc == INS_OK; i++) {
        struct vmdk_extent *e = &s->extents[i];

        if (e->flat)
            check_flat(c, i, e);
        else if (e->entry_size == 4 && !e->sesparse && e->l2_size &&
                 e->l2_size * 4 <= MAX_GT_BYTES && e->cluster_sectors > 0)
            rc = check_sparse(c, e);
        else
            check_grains(c, e);
        if (!e->flat && e->cluster_sectors > 0 && e->sectors > 0)
            c->n_total += (e->sectors + e->cluster_sectors - 1) / e->cluster_sectors;
    }
    /* Statistics qemu does not give for vmdk: only when asked, so that a
     * clean image's output stays qemu-img's. */
    if (rc == INS_OK && (c->ctx->flags & INS_F_EXTRA_DETAIL)) {
        c->res->total_clusters = c->n_total;
        c->res->allocated_clusters = c->n_alloc;
        c->res->fragmented_clusters = c->n_frag;
        c->res->compressed_clusters = c->n_compressed;
        c->res->image_end_offset = (int64_t)c->end_offset;
    }
    return rc;
}

int ins_vmdk_check(struct ins_image *img, unsigned fix,
                   struct ins_check_result *res)
{
    struct vmdk_check c;
    int rc;

    /* qemu cannot repair vmdk images: qemu-img says "not supported". */
    if (fix)
        return ins_error(img->ctx, INS_ENOTSUP,
                         "This image format does not support checks");
    memset(&c, 0, sizeof(c));
    c.img = img;
    c.s = (struct vmdk_image *)img;
    c.ctx = img->ctx;
    c.res = res;
    ins_check_log_init(&c.log, c.ctx);
    if (ins_check_unsafe(img))
        rc = qemu_walk(&c);
    else
        rc = safe_check(&c);
    ins_check_log_free(&c.log);
    ins_free(c.ctx, c.ranges);
    return rc;
}

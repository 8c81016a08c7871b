/*
 * qed_check.c - qemu-img check for QED images.
 *
 * qemu's qed_check (block/qed-check.c, the same in 7.2 and 10.0) is
 * already a real validation, so both modes do exactly what it does:
 *   - every L1 and L2 entry must be a cluster-aligned offset past the
 *     header and inside the file (an L2 table: its first and last
 *     clusters); each bad one is a corruption;
 *   - no cluster may be referenced twice (the L1 table's own clusters
 *     included): each repeat is a corruption, and a table that repeats a
 *     cluster is not read;
 *   - clusters past the header that nothing references are leaks;
 *   - statistics: allocated and fragmented clusters, total clusters.
 * qemu prints no lines for any of it; the safe default prints one for
 * each problem ("ERROR ...", "Repairing ...", "Leaked cluster ...").
 *
 * Repair (-r leaks or -r all alike: qemu passes "fix" as a boolean) sets
 * bad entries to zero and writes the tables back, then clears the
 * "needs check" feature when nothing unfixable is left.  Leaks are not
 * repaired.  The used-cluster bitmap is one bit per cluster of the file
 * (capped); tables are read one at a time.
 */
#include "fmt_check.h"

#include <string.h>

#define QED_F_NEED_CHECK    0x02u
#define QED_OFF_FEATURES    16
/* Our caps: one table in memory, and the bitmap of used clusters. */
#define MAX_TABLE_BYTES     (64u << 20)
#define MAX_CLUSTERS        ((uint64_t)1 << 31)

struct qed_check {
    struct ins_image *img;
    struct ins_ctx *ctx;
    struct ins_check_result *res;
    struct qed_layout l;
    int fix;
    int safe;                   /* print a line for each problem */
    uint32_t nelems;
    uint64_t nclusters;
    uint8_t *used;
    uint8_t *raw;               /* one table as on disk */
    struct ins_check_log log;   /* stderr lines, batched */
};

/* qed_check_cluster_offset */
static int cluster_ok(const struct qed_check *c, uint64_t off)
{
    uint64_t header = (uint64_t)c->l.header_size * c->l.cluster_size;

    if (off & (c->l.cluster_size - 1))
        return 0;
    return off >= header && off < c->l.file_size;
}

/* qed_check_table_offset: first and last clusters; a one-cluster table
 * fails qemu's overflow test. */
static int table_ok(const struct qed_check *c, uint64_t off)
{
    uint64_t end = off + (uint64_t)(c->l.table_size - 1) * c->l.cluster_size;

    if (end <= off)
        return 0;
    return cluster_ok(c, off) && cluster_ok(c, end);
}

/* qed_set_used_clusters: returns whether none was used before. */
static int mark_used(struct qed_check *c, uint64_t off, uint32_t n)
{
    uint64_t cl = off / c->l.cluster_size;
    int64_t repeats = 0;

    for (; n-- != 0; cl++) {
        if (cl >= c->nclusters)
            continue;   /* cannot happen after the offset checks */
        if (ins_bitset_test_set(c->used, cl)) {
            repeats++;
            if (c->safe)
                ins_check_logf(&c->log, "ERROR cluster %llu (offset %llu) is "
                               "referenced more than once",
                               (unsigned long long)cl,
                               (unsigned long long)(cl * c->l.cluster_size));
        }
    }
    c->res->corruptions += repeats;
    return repeats == 0;
}

static int read_table(struct qed_check *c, uint64_t off)
{
    return ins_read_zfill(c->img->file, c->raw, (size_t)c->nelems * 8, off);
}

static int write_table(struct qed_check *c, uint64_t off)
{
    int rc = ins_write(c->img->file, c->raw, (size_t)c->nelems * 8, off);

    return rc < 0 ? rc : ins_flush(c->img->file);
}

static void clear_entry(uint8_t *p)
{
    memset(p, 0, 8);
}

/* qed_check_l2_table: returns the number of invalid entries. */
static uint32_t check_l2(struct qed_check *c)
{
    uint64_t last = 0;
    uint32_t i, invalid = 0;

    for (i = 0; i < c->nelems; i++) {
        uint64_t off = ins_le64(c->raw + 8 * (size_t)i);

        if (off == 0 || off == 1)       /* unallocated, zero */
            continue;
        c->res->allocated_clusters++;
        if (last && last + c->l.cluster_size != off)
            c->res->fragmented_clusters++;
        last = off;
        if (!cluster_ok(c, off)) {
            if (c->safe)
                ins_check_logf(&c->log, "%s L2 entry %u: invalid data cluster "
                               "offset %llu", c->fix ? "Repairing" : "ERROR", i,
                               (unsigned long long)off);
            if (c->fix) {
                clear_entry(c->raw + 8 * (size_t)i);
                c->res->corruptions_fixed++;
            } else {
                c->res->corruptions++;
            }
            invalid++;
            continue;
        }
        mark_used(c, off, 1);
    }
    return invalid;
}

/* qed_check_l1_table.  The L1 table stays in l1 (ours); L2 tables pass
 * through c->raw one at a time. */
static int check_l1(struct qed_check *c, uint8_t *l1)
{
    uint32_t i, invalid = 0;
    int rc, last_error = 0;

    mark_used(c, c->l.l1_table_offset, c->l.table_size);
    for (i = 0; i < c->nelems; i++) {
        uint64_t off = ins_le64(l1 + 8 * (size_t)i);

        if (off == 0)
            continue;
        if (!table_ok(c, off)) {
            if (c->safe)
                ins_check_logf(&c->log, "%s L1 entry %u: invalid L2 table "
                               "offset %llu", c->fix ? "Repairing" : "ERROR", i,
                               (unsigned long long)off);
            if (c->fix) {
                clear_entry(l1 + 8 * (size_t)i);
                c->res->corruptions_fixed++;
            } else {
                c->res->corruptions++;
            }
            invalid++;
            continue;
        }
        if (!mark_used(c, off, c->l.table_size))
            continue;           /* skip a table that reuses clusters */
        if ((rc = read_table(c, off)) < 0) {
            c->res->check_errors++;
            last_error = rc;
            continue;
        }
        if (check_l2(c) > 0 && c->fix && (rc = write_table(c, off)) < 0) {
            c->res->check_errors++;
            last_error = rc;
        }
    }
    if (invalid > 0 && c->fix) {
        rc = ins_write(c->img->file, l1, (size_t)c->nelems * 8,
                       c->l.l1_table_offset);
        if (rc == INS_OK)
            rc = ins_flush(c->img->file);
        if (rc < 0) {
            c->res->check_errors++;
            last_error = rc;
        }
    }
    return last_error;
}

/* qed_check_mark_clean: after a repair with nothing left unfixed. */
static int mark_clean(struct qed_check *c)
{
    uint8_t b[8];
    uint64_t features = c->l.features & ~(uint64_t)QED_F_NEED_CHECK;
    int k, rc;

    if (c->res->corruptions > 0 || c->res->check_errors > 0 ||
        !(c->l.features & QED_F_NEED_CHECK))
        return INS_OK;
    if ((rc = ins_flush(c->img->file)) < 0)
        return rc;
    for (k = 0; k < 8; k++)
        b[k] = (uint8_t)(features >> (8 * k));
    if ((rc = ins_write(c->img->file, b, 8, QED_OFF_FEATURES)) < 0)
        return rc;
    return ins_flush(c->img->file);
}

int ins_qed_check(struct ins_image *img, unsigned fix,
                  struct ins_check_result *res)
{
    struct ins_ctx *ctx = img->ctx;
    struct qed_check c;
    uint64_t table_bytes;
    uint8_t *l1 = NULL;
    int rc;

    memset(&c, 0, sizeof(c));
    c.img = img;
    c.ctx = ctx;
    c.res = res;
    c.fix = fix != 0;
    c.safe = !ins_check_unsafe(img);
    ins_qed_layout(img, &c.l);
    table_bytes = (uint64_t)c.l.cluster_size * c.l.table_size;
    c.nelems = (uint32_t)(table_bytes / 8);
    c.nclusters = c.l.file_size / c.l.cluster_size;
    if (table_bytes > MAX_TABLE_BYTES || c.nclusters > MAX_CLUSTERS)
        return ins_error(ctx, INS_EFBIG, "QED image too large to check "
                         "(tables of %llu bytes, %llu clusters)",
                         (unsigned long long)table_bytes,
                         (unsigned long long)c.nclusters);
    c.used = ins_bitset_new(ctx, c.nclusters);
    c.raw = ins_malloc(ctx, (size_t)table_bytes);
    l1 = ins_malloc(ctx, (size_t)table_bytes);
    if ((c.nclusters && !c.used) || !c.raw || !l1) {
        rc = ins_error(ctx, INS_ENOMEM, "Out of memory");
        goto out;
    }
    res->total_clusters = (int64_t)((c.l.image_size + c.l.cluster_size - 1) /
                                    c.l.cluster_size);
    ins_check_log_init(&c.log, ctx);
    rc = ins_read_zfill(img->file, l1, (size_t)table_bytes, c.l.l1_table_offset);
    if (rc == INS_OK)
        rc = check_l1(&c, l1);
    if (rc == INS_OK) {
        uint64_t i;

        /* Only after a complete scan: clusters nothing references. */
        for (i = c.l.header_size; i < c.nclusters; i++)
            if (!ins_bitset_test(c.used, i)) {
                res->leaks++;
                if (c.safe)
                    ins_check_logf(&c.log, "Leaked cluster %llu (offset %llu)",
                                   (unsigned long long)i,
                                   (unsigned long long)(i * c.l.cluster_size));
            }
        /* qemu ignores a failure to mark the image clean. */
        if (c.fix)
            (void)mark_clean(&c);
    }
    if (rc < 0)
        rc = ins_error(ctx, rc, "%s", ins_strerror(rc));
    ins_check_log_free(&c.log);
out:
    ins_free(ctx, c.used);
    ins_free(ctx, c.raw);
    ins_free(ctx, l1);
    return rc;
}

/*
 * qcow2_check.c - qemu-img check for qcow2: qemu's qcow2_co_check().
 *
 * The check walks every structure that references clusters (header, the
 * active and every snapshot's L1 and L2 tables, the snapshot table, the
 * refcount table and blocks, the crypto header, the bitmap directory and
 * bitmap tables), counting references in an in-memory refcount array
 * (qemu's IMRT: one entry per host cluster, nothing per guest cluster),
 * and compares the counts with the on-disk refcounts.  Messages, counters
 * and repairs follow qemu's qcow2-refcount.c and qcow2-snapshot.c in the
 * same order, so that the output is qemu-img's.
 *
 * Memory: the IMRT (bounded by the file's length, and capped), one L1
 * table (at most qemu's 32 MiB), one L2 table, one refcount block and the
 * refcount table (at most qemu's 8 MiB).
 *
 * Repairs are written so that a crash at any point leaves an image that a
 * later check -r all repairs: refcounts are raised before anything new
 * points at a cluster, a rebuilt refcount structure is written and
 * flushed before the header points at it, and the dirty and corrupt bits
 * are cleared last, after a flush.
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "check.h"
#include "qcow2_read.h"

#define QEMU_MAX_LENGTH     0x7fffffffc0000000ull
#define QEMU_INT_MAX        0x7fffffffll

#define L1E_RESERVED_MASK   0x7f000000000001ffull
#define L2E_STD_RESERVED    0x3f000000000001feull
#define REFT_OFFSET_MASK    0xfffffffffffffe00ull
#define REFT_RESERVED_MASK  0x1ffull
#define L2_BITMAP_ALL_ALLOC 0x00000000ffffffffull
#define L2_BITMAP_ALL_ZERO  0xffffffff00000000ull
#define BME_RESERVED        0xff000000000001feull
#define BME_OFFSET_MASK     0x00fffffffffffe00ull
#define BITMAP_ENTRY_SIZE   24
/* Our cap on the in-memory refcount array (qemu has none but the file's
 * length; the worker has 1 GiB of address space). */
#define IMRT_MAX_BYTES      (512ull << 20)

enum ctype { CT_UNALLOC, CT_ZERO_PLAIN, CT_ZERO_ALLOC, CT_NORMAL, CT_COMPRESSED };

struct csnap {
    uint64_t at;                    /* the entry in the table read */
    uint64_t l1_offset;
    uint32_t l1_size;
    uint32_t extra_size;            /* as kept (at most 1024) */
    char *id;
    char *name;
};

struct l2memo {
    uint64_t key;                   /* L2 offset + 1; 0: empty slot */
    size_t start;                   /* in memo_idx */
    uint32_t count;
    uint32_t alloc, frag;
};

/* Our cap on the memo's cluster indices (they only save time). */
#define MEMO_MAX_IDX    (16u << 20)

struct chk {
    struct qcow2_image *st;
    struct ins_ctx *ctx;
    struct ins_bdev *bd;
    unsigned fix;
    uint64_t cs;                    /* cluster size */
    uint32_t cb;                    /* cluster bits */
    uint32_t order;                 /* refcount order */
    uint64_t refcount_max;
    uint32_t l2_entries;
    unsigned l2_esize;              /* 8, or 16 with extended L2 */
    int data_file;
    int64_t file_len;

    /* The IMRT: nb entries of imrt_esize bytes (values <= refcount_max). */
    uint8_t *imrt;
    int64_t nb;
    size_t imrt_cap;                /* entries allocated */
    unsigned imrt_esize;

    /* The on-disk refcount table, and one cached refcount block. */
    uint64_t *reftable;
    uint64_t reftable_size;         /* entries */
    uint64_t reftable_offset;
    uint32_t rb_bits;               /* log2(entries per refblock) */
    uint8_t *rb;
    uint64_t rb_offset;             /* 0: nothing cached */
    int rb_dirty;
    int signaled;

    /* The snapshot table as check reads it. */
    struct csnap *snaps;
    uint32_t nb_snaps;
    uint64_t snapshots_offset;
    uint64_t snapshots_size;

    struct ins_check_log log;       /* stderr lines, batched */
    uint64_t slow_incs;             /* inc_refs() calls (not the fast path) */

    /* L2 tables walked without finding anything wrong, to replay when
     * another L1 table (a snapshot's) names them again: their clusters'
     * indices in order, and their allocation statistics. */
    struct l2memo *memo;
    size_t memo_cap;                /* slots, a power of two */
    size_t memo_used;
    uint32_t *memo_idx;
    size_t memo_idx_len, memo_idx_cap;
    uint8_t *l2;                    /* one cluster */
    uint64_t *l1;                   /* the table being walked */
};

/* ---- small helpers ---- */

static const char *err_text(int rc)
{
    return ins_strerror(rc);
}

/* bdrv_pread() on the image file: past EOF reads zeros; beyond qemu's
 * maximum request, EIO. */
static int cread(struct chk *c, void *buf, uint64_t len, uint64_t off)
{
    if (off > QEMU_MAX_LENGTH || len > QEMU_MAX_LENGTH - off)
        return INS_EIO;
    return ins_read_zfill(c->bd, buf, (size_t)len, off);
}

static void put_be64(uint8_t *p, uint64_t v)
{
    int i;

    for (i = 7; i >= 0; i--, v >>= 8)
        p[i] = (uint8_t)v;
}

static void put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* Refcount of entry i in a big-endian refcount block of width 2^order. */
static uint64_t rb_get(const uint8_t *b, uint32_t order, uint64_t i)
{
    switch (order) {
    case 0: return (b[i / 8] >> (i % 8)) & 1;
    case 1: return (b[i / 4] >> (2 * (i % 4))) & 3;
    case 2: return (b[i / 2] >> (4 * (i % 2))) & 15;
    case 3: return b[i];
    case 4: return ins_be16(b + 2 * i);
    case 5: return ins_be32(b + 4 * i);
    default: return ins_be64(b + 8 * i);
    }
}

static void rb_set(uint8_t *b, uint32_t order, uint64_t i, uint64_t v)
{
    unsigned shift;

    switch (order) {
    case 0: case 1: case 2:
        shift = (unsigned)((i % (8u >> order)) << order);
        b[i >> (3 - order)] = (uint8_t)((b[i >> (3 - order)] &
                              ~(((1u << (1u << order)) - 1) << shift)) |
                              (v << shift));
        break;
    case 3: b[i] = (uint8_t)v; break;
    case 4: b[2 * i] = (uint8_t)(v >> 8); b[2 * i + 1] = (uint8_t)v; break;
    case 5: put_be32(b + 4 * i, (uint32_t)v); break;
    default: put_be64(b + 8 * i, v); break;
    }
}

/* ---- the in-memory refcount table ---- */

/* The IMRT holds native integers of the narrowest width that fits the
 * image's refcounts. */
static inline uint64_t imrt_get(const struct chk *c, int64_t k)
{
    switch (c->imrt_esize) {
    case 1: return c->imrt[k];
    case 2: return ((const uint16_t *)(const void *)c->imrt)[k];
    case 4: return ((const uint32_t *)(const void *)c->imrt)[k];
    default: return ((const uint64_t *)(const void *)c->imrt)[k];
    }
}

static inline void imrt_set(struct chk *c, int64_t k, uint64_t v)
{
    switch (c->imrt_esize) {
    case 1: c->imrt[k] = (uint8_t)v; break;
    case 2: ((uint16_t *)(void *)c->imrt)[k] = (uint16_t)v; break;
    case 4: ((uint32_t *)(void *)c->imrt)[k] = (uint32_t)v; break;
    default: ((uint64_t *)(void *)c->imrt)[k] = v; break;
    }
}

/* realloc_refcount_array(): grows the IMRT to n entries (zeroed). */
static int imrt_resize(struct chk *c, int64_t n)
{
    size_t cap;
    uint8_t *p;

    if (n <= c->nb) {
        c->nb = n;
        return INS_OK;
    }
    if ((uint64_t)n > IMRT_MAX_BYTES / c->imrt_esize)
        return INS_ENOMEM;
    if ((size_t)n > c->imrt_cap) {
        cap = c->imrt_cap ? c->imrt_cap : 4096;
        while (cap < (size_t)n)
            cap *= 2;
        if (cap > IMRT_MAX_BYTES / c->imrt_esize)
            cap = IMRT_MAX_BYTES / c->imrt_esize;
        p = ins_realloc(c->ctx, c->imrt, cap * c->imrt_esize);
        if (!p)
            return INS_ENOMEM;
        memset(p + c->imrt_cap * c->imrt_esize, 0,
               (cap - c->imrt_cap) * c->imrt_esize);
        c->imrt = p;
        c->imrt_cap = cap;
    }
    c->nb = n;
    return INS_OK;
}

/* qcow2_inc_refcounts_imrt() */
static int inc_refs(struct chk *c, struct ins_check_result *res,
                    int64_t offset, int64_t size)
{
    uint64_t start, last, off;
    int rc;

    c->slow_incs++;
    if (size <= 0)
        return INS_OK;
    /* The file may have grown (repairs): its length now, as qemu asks. */
    c->file_len = (int64_t)ins_file_length(c->bd);
    /* The last cluster may be partly past the end of the file. */
    if ((int64_t)((uint64_t)offset + (uint64_t)size - (uint64_t)c->file_len) >=
        (int64_t)c->cs) {
        ins_check_logf(&c->log, "ERROR: counting reference for region exceeding "
                      "the end of the file by one cluster or more: offset 0x%"
                      PRIx64 " size 0x%" PRIx64, (uint64_t)offset,
                      (uint64_t)size);
        res->corruptions++;
        return INS_OK;
    }
    start = (uint64_t)offset & ~(c->cs - 1);
    last = ((uint64_t)offset + (uint64_t)size - 1) & ~(c->cs - 1);
    for (off = start; off <= last; off += c->cs) {
        int64_t k = (int64_t)(off >> c->cb);
        uint64_t r;

        if (k >= c->nb) {
            rc = imrt_resize(c, k + 1);
            if (rc < 0) {
                res->check_errors++;
                return rc;
            }
        }
        r = imrt_get(c, k);
        if (r == c->refcount_max) {
            ins_check_logf(&c->log, "ERROR: overflow cluster offset=0x%" PRIx64, off);
            ins_check_logf(&c->log, "Use qemu-img amend to increase the refcount "
                          "entry width or qemu-img convert to create a clean "
                          "copy if the image cannot be opened for writing");
            res->corruptions++;
            continue;
        }
        imrt_set(c, k, r + 1);
        if (off > UINT64_MAX - c->cs)
            break;
    }
    return INS_OK;
}

/* inc_refs() for one whole cluster: the common case done inline (the
 * check's hot loop), anything unusual through inc_refs(). */
static inline int inc_cluster(struct chk *c, struct ins_check_result *res,
                              uint64_t off)
{
    int64_t k = (int64_t)(off >> c->cb);
    uint64_t r;

    if ((off & (c->cs - 1)) == 0 && k < c->nb &&
        off < ((c->bd->size + 511) & ~(uint64_t)511)) {
        r = imrt_get(c, k);
        if (r != c->refcount_max) {
            imrt_set(c, k, r + 1);
            return INS_OK;
        }
    }
    return inc_refs(c, res, (int64_t)off, (int64_t)c->cs);
}

/* ---- on-disk refcounts ---- */

/* qcow2_signal_corruption(), once per check. */
static void signal_corruption(struct chk *c, const char *msg)
{
    if (c->signaled)
        return;
    c->signaled = 1;
    if (ins_writable(c->bd))
        ins_check_logf(&c->log, "qcow2: Marking image as corrupt: %s; further "
                      "corruption events will be suppressed", msg);
    else
        ins_check_logf(&c->log, "qcow2: Image is corrupt: %s; further non-fatal "
                      "corruption events will be suppressed", msg);
}

static int rb_writeback(struct chk *c)
{
    int rc;

    if (!c->rb_dirty)
        return INS_OK;
    rc = ins_write(c->bd, c->rb, c->cs, c->rb_offset);
    if (rc == INS_OK)
        c->rb_dirty = 0;
    return rc;
}

/* Loads the refcount block holding cluster k; *rb_off 0 means none. */
static int rb_load(struct chk *c, uint64_t k, uint64_t *rb_off)
{
    uint64_t idx = k >> c->rb_bits, off;
    char msg[128];
    int rc;

    *rb_off = 0;
    if (idx >= c->reftable_size)
        return INS_OK;
    off = c->reftable[idx] & REFT_OFFSET_MASK;
    if (!off)
        return INS_OK;
    if (off & (c->cs - 1)) {
        snprintf(msg, sizeof(msg), "Refblock offset %#" PRIx64 " unaligned "
                 "(reftable index: %#" PRIx64 ")", off, idx);
        signal_corruption(c, msg);
        return INS_EIO;
    }
    if (c->rb_offset != off) {
        rc = rb_writeback(c);
        if (rc < 0)
            return rc;
        c->rb_offset = 0;
        rc = cread(c, c->rb, c->cs, off);
        if (rc < 0)
            return rc;
        c->rb_offset = off;
    }
    *rb_off = off;
    return INS_OK;
}

/* qcow2_get_refcount() */
static int get_refcount(struct chk *c, uint64_t k, uint64_t *refcount)
{
    uint64_t off;
    int rc = rb_load(c, k, &off);

    *refcount = 0;
    if (rc < 0 || !off)
        return rc;
    *refcount = rb_get(c->rb, c->order, k & ((1ull << c->rb_bits) - 1));
    return INS_OK;
}

/* update_refcount() for one cluster whose refcount block exists. */
static int set_refcount(struct chk *c, uint64_t k, uint64_t value)
{
    uint64_t off;
    int rc = rb_load(c, k, &off);

    if (rc < 0)
        return rc;
    if (!off)
        return INS_EIO;
    rb_set(c->rb, c->order, k & ((1ull << c->rb_bits) - 1), value);
    c->rb_dirty = 1;
    return INS_OK;
}

static int load_reftable(struct chk *c)
{
    struct qcow2_image *st = c->st;
    uint64_t n = (uint64_t)st->refcount_table_clusters << (c->cb - 3), i;
    uint8_t *raw;
    int rc;

    c->reftable_offset = st->refcount_table_offset;
    c->reftable_size = n;
    if (n == 0)
        return INS_OK;
    /* At most qemu's 8 MiB: the header was validated at open. */
    c->reftable = ins_malloc(c->ctx, n * 8);
    if (!c->reftable)
        return INS_ENOMEM;
    raw = (uint8_t *)c->reftable;
    rc = cread(c, raw, n * 8, st->refcount_table_offset);
    if (rc < 0)
        return rc;
    for (i = 0; i < n; i++)
        c->reftable[i] = ins_be64(raw + 8 * i);
    return INS_OK;
}

/* ---- L1 and L2 tables ---- */

static enum ctype cluster_type(const struct chk *c, uint64_t e)
{
    if (e & QCOW2_OFLAG_COMPRESSED)
        return CT_COMPRESSED;
    if ((e & QCOW2_OFLAG_ZERO) && !c->st->extended_l2)
        return (e & QCOW2_L2E_OFFSET_MASK) ? CT_ZERO_ALLOC : CT_ZERO_PLAIN;
    if (!(e & QCOW2_L2E_OFFSET_MASK))
        return c->data_file && (e & QCOW2_OFLAG_COPIED) ? CT_NORMAL : CT_UNALLOC;
    return CT_NORMAL;
}

static uint64_t l2_get(const struct chk *c, uint32_t i)
{
    return ins_be64(c->l2 + (size_t)i * c->l2_esize);
}

static uint64_t l2_bitmap(const struct chk *c, uint32_t i)
{
    return c->st->extended_l2 ? ins_be64(c->l2 + (size_t)i * 16 + 8) : 0;
}

/* Ranges of the metadata a repair must not overwrite
 * (qcow2_check_metadata_overlap() for the structures we know). */
static const char *overlap(const struct chk *c, uint64_t off, uint64_t len)
{
    const struct qcow2_image *st = c->st;
    uint64_t i;

#define OVERLAPS(o, l) ((l) > 0 && off < (o) + (l) && (o) < off + len)
    if (OVERLAPS(0, c->cs))
        return "qcow2_header";
    if (OVERLAPS(st->l1_table_offset, (uint64_t)st->l1_size * 8))
        return "active L1 table";
    if (OVERLAPS(c->reftable_offset, c->reftable_size * 8))
        return "refcount table";
    if (OVERLAPS(c->snapshots_offset, c->snapshots_size))
        return "snapshot table";
    for (i = 0; i < c->reftable_size; i++) {
        uint64_t rb = c->reftable[i] & REFT_OFFSET_MASK;

        if (rb && OVERLAPS(rb, c->cs))
            return "refcount block";
    }
#undef OVERLAPS
    return NULL;
}

static int overlap_check(struct chk *c, uint64_t off, uint64_t len)
{
    const char *what = overlap(c, off, len);
    char msg[128];

    if (!what)
        return INS_OK;
    snprintf(msg, sizeof(msg), "Preventing invalid write on metadata "
             "(overlaps with %s)", what);
    signal_corruption(c, msg);
    return INS_EIO;
}

/* fix_l2_entry_by_zero() */
static int fix_l2_by_zero(struct chk *c, struct ins_check_result *res,
                          uint64_t l2_off, uint32_t i, int *overlapped)
{
    uint8_t *e = c->l2 + (size_t)i * c->l2_esize;
    uint64_t where = l2_off + (uint64_t)i * c->l2_esize;
    int rc;

    if (c->st->extended_l2) {
        uint64_t bm = ins_be64(e + 8);

        bm |= bm << 32;
        bm &= L2_BITMAP_ALL_ZERO;
        put_be64(e + 8, bm);
        put_be64(e, 0);
    } else {
        put_be64(e, QCOW2_OFLAG_ZERO);
    }
    rc = overlap_check(c, where, c->l2_esize);
    *overlapped = rc < 0;
    if (rc < 0) {
        ins_check_logf(&c->log, "ERROR: Overlap check failed");
        goto fail;
    }
    rc = ins_write(c->bd, e, c->l2_esize, where);
    if (rc == INS_OK)
        rc = ins_flush(c->bd);
    if (rc < 0) {
        ins_check_logf(&c->log, "ERROR: Failed to overwrite L2 table entry: %s",
                      err_text(rc));
        goto fail;
    }
    res->corruptions--;
    res->corruptions_fixed++;
    return INS_OK;
fail:
    res->check_errors++;
    return rc;
}

static struct l2memo *memo_find(struct chk *c, uint64_t l2_off)
{
    size_t i;

    if (!c->memo)
        return NULL;
    for (i = (size_t)((l2_off >> c->cb) * 0x9e3779b97f4a7c15ull) & (c->memo_cap - 1);
         c->memo[i].key; i = (i + 1) & (c->memo_cap - 1))
        if (c->memo[i].key == l2_off + 1)
            return &c->memo[i];
    return NULL;
}

/* Remembers a table; failure (memory) only means no memo. */
static void memo_add(struct chk *c, uint64_t l2_off, size_t start,
                     uint32_t alloc, uint32_t frag)
{
    struct l2memo *m;
    size_t i;

    if (c->memo_used * 2 >= c->memo_cap) {
        size_t cap = c->memo_cap ? c->memo_cap * 2 : 64, j;
        struct l2memo *old = c->memo, *n = ins_calloc(c->ctx, cap, sizeof(*n));

        if (!n)
            return;
        c->memo = n;
        c->memo_cap = cap;
        for (j = 0; old && j < cap / 2; j++) {
            if (!old[j].key)
                continue;
            for (i = (size_t)(((old[j].key - 1) >> c->cb) * 0x9e3779b97f4a7c15ull) &
                     (cap - 1); n[i].key; i = (i + 1) & (cap - 1))
                ;
            n[i] = old[j];
        }
        ins_free(c->ctx, old);
    }
    for (i = (size_t)((l2_off >> c->cb) * 0x9e3779b97f4a7c15ull) & (c->memo_cap - 1);
         c->memo[i].key; i = (i + 1) & (c->memo_cap - 1))
        ;
    m = &c->memo[i];
    m->key = l2_off + 1;
    m->start = start;
    m->count = (uint32_t)(c->memo_idx_len - start);
    m->alloc = alloc;
    m->frag = frag;
    c->memo_used++;
}

static void memo_reset(struct chk *c)
{
    if (c->memo)
        memset(c->memo, 0, c->memo_cap * sizeof(*c->memo));
    c->memo_used = 0;
    c->memo_idx_len = 0;
}

/* Appends a cluster index to the table being walked; 0 when full. */
static int memo_push(struct chk *c, uint64_t k)
{
    if (c->memo_idx_len == c->memo_idx_cap) {
        size_t cap = c->memo_idx_cap ? c->memo_idx_cap * 2 : 65536;
        uint32_t *n;

        if (cap > MEMO_MAX_IDX)
            return 0;
        n = ins_realloc(c->ctx, c->memo_idx, cap * sizeof(*n));
        if (!n)
            return 0;
        c->memo_idx = n;
        c->memo_idx_cap = cap;
    }
    c->memo_idx[c->memo_idx_len++] = (uint32_t)k;
    return 1;
}

/* check_refcounts_l2() */
static int check_l2(struct chk *c, struct ins_check_result *res,
                    uint64_t l2_off, int frag, int active)
{
    uint64_t next_contig = 0, lines = c->log.lines, slow = c->slow_incs;
    int64_t corrupt = res->corruptions, errors = res->check_errors;
    struct l2memo *m = memo_find(c, l2_off);
    size_t start = c->memo_idx_len;
    uint32_t i, n_alloc = 0, n_frag = 0;
    int rc, simple = 1;

    if (m) {
        /* The same increments, in the same order (an overflow reports
         * where qemu's walk would), without reading it again. */
        for (i = 0; i < m->count; i++) {
            rc = inc_cluster(c, res, (uint64_t)c->memo_idx[m->start + i] << c->cb);
            if (rc < 0)
                return rc;
        }
        if (frag) {
            res->allocated_clusters += m->alloc;
            res->fragmented_clusters += m->frag;
        }
        return INS_OK;
    }

    (void)active;
    rc = cread(c, c->l2, c->cs, l2_off);
    if (rc < 0) {
        ins_check_logf(&c->log, "ERROR: I/O error in check_refcounts_l2");
        res->check_errors++;
        return rc;
    }
    for (i = 0; i < c->l2_entries; i++) {
        uint64_t e = l2_get(c, i), bm = l2_bitmap(c, i);
        enum ctype t = cluster_type(c, e);

        if (t != CT_COMPRESSED && (e & L2E_STD_RESERVED)) {
            ins_check_logf(&c->log, "ERROR found l2 entry with reserved bits "
                          "set: %" PRIx64, e);
            res->corruptions++;
        }
        switch (t) {
        case CT_COMPRESSED: {
            uint32_t shift = 62 - (c->cb - 8);
            uint64_t mask = (1ull << shift) - 1, coff, nsec;
            int64_t csize;

            if (e & QCOW2_OFLAG_COPIED) {
                ins_check_logf(&c->log, "ERROR: coffset=0x%" PRIx64 ": copied "
                              "flag must never be set for compressed clusters",
                              e & mask);
                e &= ~QCOW2_OFLAG_COPIED;
                res->corruptions++;
            }
            if (c->data_file) {
                ins_check_logf(&c->log, "ERROR compressed cluster %d with data "
                              "file, entry=0x%" PRIx64, (int)i, e);
                res->corruptions++;
                break;
            }
            if (bm) {
                ins_check_logf(&c->log, "ERROR compressed cluster %d with "
                              "non-zero subcluster allocation bitmap, "
                              "entry=0x%" PRIx64, (int)i, e);
                res->corruptions++;
                break;
            }
            coff = e & mask;
            nsec = ((e >> shift) & ((1ull << (c->cb - 8)) - 1)) + 1;
            csize = (int64_t)(nsec * 512 - (coff & 511));
            rc = inc_refs(c, res, (int64_t)coff, csize);
            if (rc < 0)
                return rc;
            if (frag) {
                res->allocated_clusters++;
                res->compressed_clusters++;
                res->fragmented_clusters++;
            }
            break;
        }
        case CT_ZERO_ALLOC:
        case CT_NORMAL: {
            uint64_t off = e & QCOW2_L2E_OFFSET_MASK;

            if ((bm >> 32) & bm) {
                res->corruptions++;
                ins_check_logf(&c->log, "ERROR offset=%" PRIx64 ": Allocated "
                              "cluster has corrupted subcluster allocation "
                              "bitmap", off);
            }
            if (off & (c->cs - 1)) {
                int has_data = c->st->extended_l2 ? (bm & L2_BITMAP_ALL_ALLOC) != 0
                                                  : !(e & QCOW2_OFLAG_ZERO);

                res->corruptions++;
                if (!has_data) {
                    int repair = (c->fix & INS_CHECK_FIX_ERRORS) != 0;

                    ins_check_logf(&c->log, "%s offset=%" PRIx64 ": Preallocated "
                                  "cluster is not properly aligned; L2 entry "
                                  "corrupted.", repair ? "Repairing" : "ERROR",
                                  off);
                    if (repair) {
                        int overlapped = 0;

                        rc = fix_l2_by_zero(c, res, l2_off, i, &overlapped);
                        if (overlapped)
                            return rc;
                        if (rc == 0)
                            continue;
                    }
                } else {
                    ins_check_logf(&c->log, "ERROR offset=%" PRIx64 ": Data "
                                  "cluster is not properly aligned; L2 entry "
                                  "corrupted.", off);
                }
            }
            n_alloc++;
            if (next_contig && off != next_contig)
                n_frag++;
            next_contig = off + c->cs;
            if (!c->data_file) {
                rc = inc_cluster(c, res, off);
                if (rc < 0)
                    return rc;
                if (simple && !memo_push(c, off >> c->cb))
                    simple = 0;
            }
            break;
        }
        case CT_ZERO_PLAIN:
            break;
        case CT_UNALLOC:
            if (bm & L2_BITMAP_ALL_ALLOC) {
                res->corruptions++;
                ins_check_logf(&c->log, "ERROR: Unallocated cluster has non-zero "
                              "subcluster allocation map");
            }
            break;
        }
    }
    if (frag) {
        res->allocated_clusters += n_alloc;
        res->fragmented_clusters += n_frag;
    }
    /* Nothing reported, nothing unusual: replayable. */
    if (simple && lines == c->log.lines && slow == c->slow_incs &&
        corrupt == res->corruptions && errors == res->check_errors &&
        !c->data_file)
        memo_add(c, l2_off, start, n_alloc, n_frag);
    else
        c->memo_idx_len = start;
    return INS_OK;
}

/* Reads an L1 table of n entries into c->l1 (host byte order). */
static int read_l1(struct chk *c, uint64_t off, uint32_t n)
{
    uint8_t *raw;
    uint32_t i;
    int rc;

    ins_free(c->ctx, c->l1);
    c->l1 = ins_malloc(c->ctx, (size_t)n * 8 + 8);
    if (!c->l1)
        return INS_ENOMEM;
    raw = (uint8_t *)c->l1;
    rc = cread(c, raw, (uint64_t)n * 8, off);
    if (rc < 0)
        return rc;
    for (i = 0; i < n; i++)
        c->l1[i] = ins_be64(raw + 8 * (size_t)i);
    return INS_OK;
}

/* check_refcounts_l1() */
static int check_l1(struct chk *c, struct ins_check_result *res,
                    uint64_t l1_off, uint32_t l1_size, int frag, int active)
{
    uint32_t i;
    int rc;

    if (!l1_size)
        return INS_OK;
    rc = inc_refs(c, res, (int64_t)l1_off, (int64_t)l1_size * 8);
    if (rc < 0)
        return rc;
    rc = read_l1(c, l1_off, l1_size);
    if (rc == INS_ENOMEM) {
        res->check_errors++;
        return rc;
    }
    if (rc < 0) {
        ins_check_logf(&c->log, "ERROR: I/O error in check_refcounts_l1");
        res->check_errors++;
        return rc;
    }
    for (i = 0; i < l1_size; i++) {
        uint64_t e = c->l1[i], l2_off;

        if (!e)
            continue;
        if (e & L1E_RESERVED_MASK) {
            ins_check_logf(&c->log, "ERROR found L1 entry with reserved bits "
                          "set: %" PRIx64, e);
            res->corruptions++;
        }
        l2_off = e & QCOW2_L1E_OFFSET_MASK;
        rc = inc_refs(c, res, (int64_t)l2_off, (int64_t)c->cs);
        if (rc < 0)
            return rc;
        if (l2_off & (c->cs - 1)) {
            ins_check_logf(&c->log, "ERROR l2_offset=%" PRIx64 ": Table is not "
                          "cluster aligned; L1 entry corrupted", l2_off);
            res->corruptions++;
        }
        rc = check_l2(c, res, l2_off, frag, active);
        if (rc < 0)
            return rc;
    }
    return INS_OK;
}

/* ---- snapshots ---- */

static void free_snaps(struct chk *c)
{
    uint32_t i;

    for (i = 0; i < c->nb_snaps; i++) {
        ins_free(c->ctx, c->snaps[i].id);
        ins_free(c->ctx, c->snaps[i].name);
    }
    ins_free(c->ctx, c->snaps);
    c->snaps = NULL;
    c->nb_snaps = 0;
}

static char *read_str(struct chk *c, uint64_t off, uint32_t len, int *rc)
{
    char *s = ins_malloc(c->ctx, (size_t)len + 1);

    if (!s) {
        *rc = INS_ENOMEM;
        return NULL;
    }
    *rc = cread(c, s, len, off);
    if (*rc < 0) {
        ins_free(c->ctx, s);
        return NULL;
    }
    s[len] = '\0';
    return s;
}

/*
 * qcow2_do_read_snapshots() in check mode: with repair, a table too long
 * is cut (*reduced) and excess extra data dropped (*dropped).  Returns
 * INS_E* with *why set on failure.
 */
static int read_snaps(struct chk *c, int repair, uint32_t n, int *reduced,
                      int *dropped, char *why, size_t whylen)
{
    uint64_t off = c->snapshots_offset, pre, table_len = 0;
    uint32_t i;
    int rc;

    c->snapshots_size = 0;
    if (n == 0)
        return INS_OK;
    c->snaps = ins_calloc(c->ctx, n, sizeof(*c->snaps));
    if (!c->snaps) {
        snprintf(why, whylen, "Cannot allocate memory");
        return INS_ENOMEM;
    }
    for (i = 0; i < n; i++) {
        struct csnap *sn = &c->snaps[i];
        uint8_t h[QCOW2_SNAPSHOT_HEADER_SIZE];
        uint32_t known;
        uint16_t id_size, name_size;

        pre = off;
        table_len = (table_len + 7) & ~7ull;
        off = (off + 7) & ~7ull;
        rc = cread(c, h, sizeof(h), off);
        if (rc < 0)
            goto read_fail;
        off += sizeof(h);
        c->nb_snaps = i + 1;
        sn->at = off - sizeof(h);
        sn->l1_offset = ins_be64(h);
        sn->l1_size = ins_be32(h + 8);
        id_size = ins_be16(h + 12);
        name_size = ins_be16(h + 14);
        sn->extra_size = ins_be32(h + 36);
        if (sn->extra_size > QCOW2_MAX_SNAPSHOT_EXTRA_DATA) {
            if (!repair) {
                snprintf(why, whylen, "Too much extra metadata in snapshot "
                         "table entry %d", (int)i);
                return INS_EFBIG;
            }
            ins_check_logf(&c->log, "Discarding too much extra metadata in "
                          "snapshot table entry %d (%" PRIu32 " > %u)", (int)i,
                          sn->extra_size, QCOW2_MAX_SNAPSHOT_EXTRA_DATA);
            (*dropped)++;
        }
        known = sn->extra_size < 24 ? sn->extra_size : 24;
        if (off > QEMU_MAX_LENGTH || known > QEMU_MAX_LENGTH - off) {
            rc = INS_EIO;
            goto read_fail;
        }
        off += known;
        if (sn->extra_size > 24) {
            uint64_t end = off + sn->extra_size - 24;
            uint32_t keep = sn->extra_size > QCOW2_MAX_SNAPSHOT_EXTRA_DATA
                            ? QCOW2_MAX_SNAPSHOT_EXTRA_DATA : sn->extra_size;

            if (off > QEMU_MAX_LENGTH || keep - 24 > QEMU_MAX_LENGTH - off) {
                rc = INS_EIO;
                goto read_fail;
            }
            sn->extra_size = keep;
            off = end;
        }
        sn->id = read_str(c, off, id_size, &rc);
        if (!sn->id)
            goto read_fail;
        off += id_size;
        sn->name = read_str(c, off, name_size, &rc);
        if (!sn->name)
            goto read_fail;
        off += name_size;
        table_len += QCOW2_SNAPSHOT_HEADER_SIZE + (uint64_t)sn->extra_size +
                     id_size + name_size;
        if (table_len > QCOW2_MAX_SNAPSHOTS_SIZE ||
            off - c->snapshots_offset > (uint64_t)QEMU_INT_MAX) {
            if (!repair) {
                snprintf(why, whylen, "Snapshot table is too big");
                return INS_EFBIG;
            }
            ins_check_logf(&c->log, "Discarding %u overhanging snapshots "
                          "(snapshot table is too big)", n - i);
            *reduced += (int)(n - i);
            ins_free(c->ctx, sn->id);
            ins_free(c->ctx, sn->name);
            sn->id = sn->name = NULL;
            c->nb_snaps = i;
            off = pre;
            break;
        }
    }
    c->snapshots_size = off - c->snapshots_offset;
    return INS_OK;
read_fail:
    snprintf(why, whylen, "Failed to read snapshot table: %s", err_text(rc));
    return rc;
}

/* qcow2_check_read_snapshot_table() */
static int check_read_snapshots(struct chk *c, struct ins_check_result *res)
{
    uint8_t ptr[12];
    uint32_t n;
    int repair = (c->fix & INS_CHECK_FIX_ERRORS) != 0;
    int reduced = 0, dropped = 0, rc;
    char why[256];
    uint64_t size;

    rc = cread(c, ptr, sizeof(ptr), 60);
    if (rc < 0) {
        res->check_errors++;
        ins_check_logf(&c->log, "ERROR failed to read the snapshot table pointer "
                      "from the image header: %s", err_text(rc));
        return rc;
    }
    n = ins_be32(ptr);
    c->snapshots_offset = ins_be64(ptr + 4);
    if (n > QCOW2_MAX_SNAPSHOTS && repair) {
        ins_check_logf(&c->log, "Discarding %u overhanging snapshots",
                      n - QCOW2_MAX_SNAPSHOTS);
        reduced += (int)(n - QCOW2_MAX_SNAPSHOTS);
        n = QCOW2_MAX_SNAPSHOTS;
    }
    /* qcow2_validate_table() */
    rc = INS_OK;
    size = (uint64_t)n * QCOW2_SNAPSHOT_HEADER_SIZE;
    if (n > QCOW2_MAX_SNAPSHOTS) {
        snprintf(why, sizeof(why), "snapshot table too large");
        rc = INS_EFBIG;
    } else if ((uint64_t)INT64_MAX - size < c->snapshots_offset ||
               (c->snapshots_offset & (c->cs - 1))) {
        snprintf(why, sizeof(why), "snapshot table offset invalid");
        rc = INS_EINVAL;
    }
    if (rc < 0) {
        res->check_errors++;
        ins_check_log_report(&c->log, "ERROR %s", why);
        if (n > QCOW2_MAX_SNAPSHOTS)
            ins_check_logf(&c->log, "You can force-remove all %u overhanging "
                          "snapshots with qemu-img check -r all",
                          n - QCOW2_MAX_SNAPSHOTS);
        c->snapshots_offset = 0;
        return rc;
    }
    rc = read_snaps(c, repair, n, &reduced, &dropped, why, sizeof(why));
    if (rc < 0) {
        res->check_errors++;
        ins_check_log_report(&c->log, "ERROR failed to read the snapshot table: %s",
                         why);
        if (strncmp(why, "Too much", 8) == 0)
            ins_check_logf(&c->log, "You can force-remove this extra metadata "
                          "with qemu-img check -r all");
        else if (strncmp(why, "Snapshot table is too big", 25) == 0)
            ins_check_logf(&c->log, "You can force-remove all %u overhanging "
                          "snapshots with qemu-img check -r all",
                          n - c->nb_snaps + 1);
        free_snaps(c);
        c->snapshots_offset = 0;
        c->snapshots_size = 0;
        return rc;
    }
    res->corruptions += reduced + dropped;
    if (reduced) {
        uint8_t b[4];

        put_be32(b, c->nb_snaps);
        rc = ins_write(c->bd, b, 4, 60);
        if (rc == INS_OK)
            rc = ins_flush(c->bd);
        if (rc < 0) {
            res->check_errors++;
            ins_check_logf(&c->log, "ERROR failed to update the snapshot count "
                          "in the image header: %s", err_text(rc));
            return rc;
        }
        res->corruptions_fixed += reduced;
        res->corruptions -= reduced;
    }
    if (c->st->version >= 3) {
        uint32_t i;

        for (i = 0; i < c->nb_snaps; i++)
            if (c->snaps[i].extra_size < 16) {
                res->corruptions++;
                ins_check_logf(&c->log, "%s snapshot table entry %d is incomplete",
                              repair ? "Repairing" : "ERROR", (int)i);
            }
    }
    return INS_OK;
}

/* ---- the refcount walk ---- */

/* qcow2_check_bitmaps_refcounts() (the directory was validated at open) */
static int check_bitmaps(struct chk *c, struct ins_check_result *res)
{
    struct qcow2_image *st = c->st;
    uint32_t i, j;
    int rc;

    if (st->nb_bitmaps == 0)
        return INS_OK;
    rc = inc_refs(c, res, (int64_t)st->bitmap_directory_offset,
                  (int64_t)st->bitmap_directory_size);
    if (rc < 0)
        return rc;
    if (!st->bitmaps) {
        res->corruptions++;
        return INS_EINVAL;
    }
    for (i = 0; i < st->nb_bitmaps; i++) {
        const struct qcow2_bitmap *bm = &st->bitmaps[i];
        uint32_t per = (uint32_t)(c->cs / 8), pass;

        rc = inc_refs(c, res, (int64_t)bm->table_offset,
                      (int64_t)bm->table_size * 8);
        if (rc < 0)
            return rc;
        /* Pass 0 is bitmap_table_load(), which fails on any bad entry;
         * pass 1 counts the data clusters.  A cluster's worth at a time. */
        for (pass = 0; pass < 2; pass++) {
            for (j = 0; j < bm->table_size; j++) {
                uint64_t e, off;

                if (j % per == 0) {
                    uint32_t n = bm->table_size - j < per ? bm->table_size - j : per;

                    rc = cread(c, c->l2, (uint64_t)n * 8,
                               bm->table_offset + (uint64_t)j * 8);
                    if (rc < 0) {
                        if (pass == 0)
                            res->corruptions++;
                        return rc;
                    }
                }
                e = ins_be64(c->l2 + (size_t)(j % per) * 8);
                off = e & BME_OFFSET_MASK;
                if (pass == 0) {
                    if ((e & BME_RESERVED) ||
                        (off && ((e & 1) || (off & (c->cs - 1))))) {
                        res->corruptions++;
                        return INS_EINVAL;
                    }
                } else if (off) {
                    rc = inc_refs(c, res, (int64_t)off, (int64_t)c->cs);
                    if (rc < 0)
                        return rc;
                }
            }
        }
    }
    return INS_OK;
}

/* check_refblocks() */
static int check_refblocks(struct chk *c, struct ins_check_result *res,
                           int *rebuild)
{
    uint64_t i;
    int rc;

    for (i = 0; i < c->reftable_size; i++) {
        uint64_t off = c->reftable[i] & REFT_OFFSET_MASK;
        uint64_t cl = off >> c->cb;

        if (c->reftable[i] & REFT_RESERVED_MASK) {
            ins_check_logf(&c->log, "ERROR refcount table entry %" PRId64 " has "
                          "reserved bits set", (int64_t)i);
            res->corruptions++;
            *rebuild = 1;
            continue;
        }
        if (off & (c->cs - 1)) {
            ins_check_logf(&c->log, "ERROR refcount block %" PRId64 " is not "
                          "cluster aligned; refcount table entry corrupted",
                          (int64_t)i);
            res->corruptions++;
            *rebuild = 1;
            continue;
        }
        if (cl >= (uint64_t)c->nb) {
            res->corruptions++;
            ins_check_logf(&c->log, "%s refcount block %" PRId64 " is outside image",
                          c->fix & INS_CHECK_FIX_ERRORS ? "Repairing" : "ERROR",
                          (int64_t)i);
            if (c->fix & INS_CHECK_FIX_ERRORS) {
                /* qemu grows the file to cover the block. */
                int64_t new_nb;

                rc = INS_EINVAL;
                if (off > (uint64_t)INT64_MAX - c->cs)
                    goto resize_fail;
                rc = ins_truncate(c->bd, off + c->cs);
                if (rc < 0) {
                    /* file-posix's own error_report_err() */
                    ins_check_log_report(&c->log, "Could not resize file: %s",
                                         err_text(rc));
                    goto resize_fail;
                }
                c->file_len = (int64_t)ins_file_length(c->bd);
                new_nb = (int64_t)((c->file_len + c->cs - 1) >> c->cb);
                rc = imrt_resize(c, new_nb > c->nb ? new_nb : c->nb);
                if (rc < 0) {
                    res->check_errors++;
                    return rc;
                }
                rc = INS_EINVAL;
                if (cl >= (uint64_t)c->nb)
                    goto resize_fail;
                res->corruptions--;
                res->corruptions_fixed++;
                rc = inc_refs(c, res, (int64_t)off, (int64_t)c->cs);
                if (rc < 0)
                    return rc;
                continue;
resize_fail:
                *rebuild = 1;
                ins_check_logf(&c->log, "ERROR could not resize image: %s",
                              err_text(rc));
            }
            continue;
        }
        if (off) {
            rc = inc_refs(c, res, (int64_t)off, (int64_t)c->cs);
            if (rc < 0)
                return rc;
            if (imrt_get(c, (int64_t)cl) != 1) {
                ins_check_logf(&c->log, "ERROR refcount block %" PRId64
                              " refcount=%" PRIu64, (int64_t)i,
                              imrt_get(c, (int64_t)cl));
                res->corruptions++;
                *rebuild = 1;
            }
        }
    }
    return INS_OK;
}

/* calculate_refcounts() */
static int calculate(struct chk *c, struct ins_check_result *res, int *rebuild)
{
    struct qcow2_image *st = c->st;
    uint32_t i;
    int rc;

    if (c->nb > 0 && c->imrt)
        memset(c->imrt, 0, (size_t)c->nb * c->imrt_esize);
    memo_reset(c);
    rc = inc_refs(c, res, 0, (int64_t)c->cs);
    if (rc < 0)
        return rc;
    rc = check_l1(c, res, st->l1_table_offset, st->l1_size, 1, 1);
    if (rc < 0)
        return rc;
    if (c->data_file && c->nb_snaps) {
        ins_check_logf(&c->log, "ERROR %d snapshots in image with data file",
                      (int)c->nb_snaps);
        res->corruptions++;
    }
    for (i = 0; i < c->nb_snaps; i++) {
        const struct csnap *sn = &c->snaps[i];

        if (sn->l1_offset & (c->cs - 1)) {
            ins_check_logf(&c->log, "ERROR snapshot %s (%s) l1_offset=%#" PRIx64
                          ": L1 table is not cluster aligned; snapshot table "
                          "entry corrupted", sn->id, sn->name, sn->l1_offset);
            res->corruptions++;
            continue;
        }
        if (sn->l1_size > QCOW2_MAX_L1_SIZE / 8) {
            ins_check_logf(&c->log, "ERROR snapshot %s (%s) l1_size=%#" PRIx32
                          ": L1 table is too large; snapshot table entry "
                          "corrupted", sn->id, sn->name, sn->l1_size);
            res->corruptions++;
            continue;
        }
        rc = check_l1(c, res, sn->l1_offset, sn->l1_size, 0, 0);
        if (rc < 0)
            return rc;
    }
    rc = inc_refs(c, res, (int64_t)c->snapshots_offset, (int64_t)c->snapshots_size);
    if (rc < 0)
        return rc;
    rc = inc_refs(c, res, (int64_t)c->reftable_offset, (int64_t)c->reftable_size * 8);
    if (rc < 0)
        return rc;
    if (st->has_crypto_header && st->crypto_header_length) {
        rc = inc_refs(c, res, (int64_t)st->crypto_header_offset,
                      (int64_t)st->crypto_header_length);
        if (rc < 0)
            return rc;
    }
    rc = check_bitmaps(c, res);
    if (rc < 0)
        return rc;
    return check_refblocks(c, res, rebuild);
}

/* compare_refcounts() */
static void compare(struct chk *c, struct ins_check_result *res, unsigned fix,
                    int *rebuild, int64_t *highest)
{
    uint64_t cached_idx = UINT64_MAX;
    int64_t i;
    int rc;

    *highest = 0;
    for (i = 0; i < c->nb; i++) {
        uint64_t r1, r2;
        int64_t *fixed = NULL;

        /* The cached refcount block first: the walk is sequential. */
        if (c->rb_offset && cached_idx == (uint64_t)i >> c->rb_bits) {
            r1 = rb_get(c->rb, c->order, (uint64_t)i & ((1ull << c->rb_bits) - 1));
            rc = INS_OK;
        } else {
            rc = get_refcount(c, (uint64_t)i, &r1);
            cached_idx = (uint64_t)i >> c->rb_bits;
            if (rc < 0 || !c->rb_offset || cached_idx >= c->reftable_size ||
                (c->reftable[cached_idx] & REFT_OFFSET_MASK) != c->rb_offset)
                cached_idx = UINT64_MAX;
        }
        if (rc < 0) {
            ins_check_logf(&c->log, "Can't get refcount for cluster %" PRId64
                          ": %s", i, err_text(rc));
            res->check_errors++;
            continue;
        }
        r2 = imrt_get(c, i);
        if (r1 > 0 || r2 > 0)
            *highest = i;
        if (r1 == r2)
            continue;
        if (r1 == 0)
            *rebuild = 1;
        else if (r1 > r2 && (fix & INS_CHECK_FIX_LEAKS))
            fixed = &res->leaks_fixed;
        else if (r1 < r2 && (fix & INS_CHECK_FIX_ERRORS))
            fixed = &res->corruptions_fixed;
        ins_check_logf(&c->log, "%s cluster %" PRId64 " refcount=%" PRIu64
                      " reference=%" PRIu64, fixed ? "Repairing" :
                      r1 < r2 ? "ERROR" : "Leaked", i, r1, r2);
        if (fixed && set_refcount(c, (uint64_t)i, r2) == INS_OK) {
            (*fixed)++;
            continue;
        }
        if (r1 < r2)
            res->corruptions++;
        else
            res->leaks++;
    }
    if (rb_writeback(c) < 0)
        res->check_errors++;
}

/* check_oflag_copied() */
static int check_copied(struct chk *c, struct ins_check_result *res)
{
    struct qcow2_image *st = c->st;
    int repair;
    uint32_t i, j;
    int rc;

    if (c->fix & INS_CHECK_FIX_ERRORS)
        repair = 1;
    else if (c->fix & INS_CHECK_FIX_LEAKS)
        repair = !res->check_errors && !res->corruptions && !res->leaks;
    else
        repair = 0;
    if (!st->l1_size)
        return INS_OK;
    rc = read_l1(c, st->l1_table_offset, st->l1_size);
    if (rc < 0) {
        res->check_errors++;
        return rc;
    }
    for (i = 0; i < st->l1_size; i++) {
        uint64_t e = c->l1[i], l2_off = e & QCOW2_L1E_OFFSET_MASK, r;
        int dirty = 0;

        if (!l2_off)
            continue;
        if (get_refcount(c, l2_off >> c->cb, &r) < 0)
            continue;
        if ((r == 1) != ((e & QCOW2_OFLAG_COPIED) != 0)) {
            res->corruptions++;
            ins_check_logf(&c->log, "%s OFLAG_COPIED L2 cluster: l1_index=%d "
                          "l1_entry=%" PRIx64 " refcount=%" PRIu64,
                          repair ? "Repairing" : "ERROR", (int)i, e, r);
            if (repair) {
                uint8_t b[8];

                c->l1[i] = r == 1 ? e | QCOW2_OFLAG_COPIED
                                  : e & ~QCOW2_OFLAG_COPIED;
                put_be64(b, c->l1[i]);
                /* qcow2_write_l1_entry(): the active L1 table is the
                 * one structure this write may touch. */
                rc = ins_write(c->bd, b, 8, st->l1_table_offset + 8ull * i);
                if (rc == INS_OK)
                    rc = ins_flush(c->bd);
                if (rc < 0) {
                    res->check_errors++;
                    return rc;
                }
                res->corruptions--;
                res->corruptions_fixed++;
            }
        }
        rc = cread(c, c->l2, c->cs, l2_off);
        if (rc < 0) {
            ins_check_logf(&c->log, "ERROR: Could not read L2 table: %s",
                          err_text(rc));
            res->check_errors++;
            return rc;
        }
        for (j = 0; j < c->l2_entries; j++) {
            uint64_t l2e = l2_get(c, j);
            enum ctype t = cluster_type(c, l2e);

            if (t != CT_NORMAL && t != CT_ZERO_ALLOC)
                continue;
            if (c->data_file)
                r = 1;
            else if (get_refcount(c, (l2e & QCOW2_L2E_OFFSET_MASK) >> c->cb, &r) < 0)
                continue;
            if ((r == 1) != ((l2e & QCOW2_OFLAG_COPIED) != 0)) {
                res->corruptions++;
                ins_check_logf(&c->log, "%s OFLAG_COPIED data cluster: l2_entry=%"
                              PRIx64 " refcount=%" PRIu64,
                              repair ? "Repairing" : "ERROR", l2e, r);
                if (repair) {
                    put_be64(c->l2 + (size_t)j * c->l2_esize,
                             r == 1 ? l2e | QCOW2_OFLAG_COPIED
                                    : l2e & ~QCOW2_OFLAG_COPIED);
                    dirty++;
                }
            }
        }
        if (dirty) {
            const char *what = overlap(c, l2_off, c->cs);

            if (what) {
                ins_check_logf(&c->log, "ERROR: Could not write L2 table; metadata "
                              "overlap check failed: %s", err_text(INS_EIO));
                res->check_errors++;
                return INS_EIO;
            }
            rc = ins_write(c->bd, c->l2, c->cs, l2_off);
            if (rc < 0) {
                ins_check_logf(&c->log, "ERROR: Could not write L2 table: %s",
                              err_text(rc));
                res->check_errors++;
                return rc;
            }
            res->corruptions -= dirty;
            res->corruptions_fixed += dirty;
        }
    }
    return INS_OK;
}

/* ---- rebuilding the refcount structure ---- */

/* alloc_clusters_imrt(): n free clusters from *first_free on, marked used. */
static int64_t alloc_imrt(struct chk *c, int64_t n, int64_t *first_free)
{
    int64_t cl = *first_free, i, contig = 0;
    int first_gap = 1, rc;

    for (; cl < c->nb && contig < n; cl++) {
        if (!imrt_get(c, cl)) {
            contig++;
            if (first_gap) {
                *first_free = cl;
                first_gap = 0;
            }
        } else {
            contig = 0;
        }
    }
    if (contig < n) {
        rc = imrt_resize(c, cl + n - contig);
        if (rc < 0)
            return rc;
    }
    cl -= contig;
    for (i = 0; i < n; i++)
        imrt_set(c, cl + i, 1);
    return (int64_t)((uint64_t)cl << c->cb);
}

/* Writes refcount block idx: the IMRT's slice, big-endian. */
static int write_refblock(struct chk *c, int64_t idx, uint64_t off)
{
    uint64_t per = 1ull << c->rb_bits, i;
    int64_t start = (int64_t)((uint64_t)idx << c->rb_bits);

    if (overlap(c, off, c->cs)) {
        char msg[128];

        snprintf(msg, sizeof(msg), "Preventing invalid write on metadata "
                 "(overlaps with %s)", overlap(c, off, c->cs));
        signal_corruption(c, msg);
        return INS_EIO;
    }
    memset(c->rb, 0, c->cs);
    c->rb_offset = 0;
    for (i = 0; i < per && start + (int64_t)i < c->nb; i++)
        rb_set(c->rb, c->order, i, imrt_get(c, start + (int64_t)i));
    return ins_write(c->bd, c->rb, c->cs, off);
}

/*
 * rebuild_refcounts_write_refblocks(): writes a refcount block for every
 * block of clusters in [first, end) with a used cluster, allocating the
 * blocks in the IMRT.  Returns 1 when the new table grew, 0, or INS_E*.
 */
static int write_refblocks(struct chk *c, int64_t first, int64_t end,
                           uint64_t **table, uint32_t *entries, const char **what)
{
    int64_t cl, first_free = 0, per = (int64_t)1 << c->rb_bits;
    int grown = 0, rc;

    for (cl = first; cl < end; cl++) {
        int64_t idx, start;
        uint64_t off;

        if (cl >= c->nb || !imrt_get(c, cl)) {
            if (cl >= c->nb)
                break;
            continue;
        }
        idx = cl >> c->rb_bits;
        start = idx << c->rb_bits;
        if (*entries > (uint64_t)idx && (*table)[idx]) {
            off = (*table)[idx];
        } else {
            int64_t a;

            if (first_free < start)
                first_free = start;
            a = alloc_imrt(c, 1, &first_free);
            if (a < 0) {
                *what = "ERROR allocating refblock";
                return (int)a;
            }
            off = (uint64_t)a;
            if ((int64_t)(off >> c->cb) >= end)
                end = (int64_t)(off >> c->cb) + 1;
            if (*entries <= (uint64_t)idx) {
                uint64_t n = (((uint64_t)idx + 1) * 8 + c->cs - 1) / c->cs * c->cs / 8;
                uint64_t *t;

                if (n > QCOW2_MAX_REFTABLE_SIZE / 8) {
                    *what = "ERROR allocating reftable memory";
                    return INS_ENOMEM;
                }
                t = ins_realloc(c->ctx, *table, n * 8);
                if (!t) {
                    *what = "ERROR allocating reftable memory";
                    return INS_ENOMEM;
                }
                memset(t + *entries, 0, (n - *entries) * 8);
                *table = t;
                *entries = (uint32_t)n;
                grown = 1;
            }
            (*table)[idx] = off;
        }
        rc = write_refblock(c, idx, off);
        if (rc < 0) {
            *what = "ERROR writing refblock";
            return rc;
        }
        cl = start + per - 1;
    }
    return grown;
}

/* rebuild_refcount_structure(): a new refcount table and blocks from the
 * IMRT.  The old structure is left behind, leaked, for the caller to
 * free.  Everything new is flushed before the header points at it. */
static int rebuild_structure(struct chk *c, struct ins_check_result *res)
{
    uint64_t *table = NULL;
    uint32_t entries = 0, i;
    int64_t table_off = -1, clusters = 0;
    const char *what = NULL;
    uint8_t *raw, hdr[12];
    int rc;

    rc = write_refblocks(c, 0, c->nb, &table, &entries, &what);
    if (rc < 0) {
        res->check_errors++;
        goto fail;
    }
    do {
        int64_t first_free = 0, start;

        clusters = (int64_t)(((uint64_t)entries * 8 + c->cs - 1) >> c->cb);
        table_off = alloc_imrt(c, clusters, &first_free);
        if (table_off < 0) {
            what = "ERROR allocating reftable";
            res->check_errors++;
            rc = (int)table_off;
            goto fail;
        }
        start = table_off >> c->cb;
        rc = write_refblocks(c, start, start + clusters, &table, &entries, &what);
        if (rc < 0) {
            res->check_errors++;
            goto fail;
        }
    } while (rc);

    raw = ins_malloc(c->ctx, (size_t)entries * 8);
    if (!raw) {
        rc = INS_ENOMEM;
        what = "ERROR writing reftable";
        goto fail;
    }
    for (i = 0; i < entries; i++)
        put_be64(raw + 8 * (size_t)i, table[i]);
    rc = overlap(c, (uint64_t)table_off, (uint64_t)entries * 8) ? INS_EIO : INS_OK;
    if (rc == INS_OK)
        rc = ins_write(c->bd, raw, (size_t)entries * 8, (uint64_t)table_off);
    ins_free(c->ctx, raw);
    /* The new structure is durable before the header names it. */
    if (rc == INS_OK)
        rc = ins_flush(c->bd);
    if (rc < 0) {
        what = "ERROR writing reftable";
        goto fail;
    }
    put_be64(hdr, (uint64_t)table_off);
    put_be32(hdr + 8, (uint32_t)clusters);
    rc = ins_write(c->bd, hdr, sizeof(hdr), 48);
    if (rc == INS_OK)
        rc = ins_flush(c->bd);
    if (rc < 0) {
        what = "ERROR setting reftable";
        goto fail;
    }
    ins_free(c->ctx, c->reftable);
    c->reftable = table;
    c->reftable_size = entries;
    c->reftable_offset = (uint64_t)table_off;
    c->rb_offset = 0;
    c->rb_dirty = 0;
    c->st->refcount_table_offset = (uint64_t)table_off;
    c->st->refcount_table_clusters = (uint32_t)clusters;
    return INS_OK;
fail:
    if (what)
        ins_check_log_report(&c->log, "%s: %s", what, err_text(rc));
    ins_free(c->ctx, table);
    return rc;
}

/* qcow2_check_refcounts() */
static int check_refcounts(struct chk *c, struct ins_check_result *res)
{
    struct ins_check_result pre;
    int64_t highest = 0, nb;
    int rebuild = 0, rc;

    nb = (int64_t)((c->file_len + (int64_t)c->cs - 1) >> c->cb);
    if (nb > QEMU_INT_MAX) {
        res->check_errors++;
        return INS_EFBIG;
    }
    res->total_clusters = (int64_t)((c->st->base.virtual_size + c->cs - 1) >> c->cb);
    rc = imrt_resize(c, nb);
    if (rc < 0) {
        res->check_errors++;
        return rc;
    }
    rc = calculate(c, res, &rebuild);
    if (rc < 0)
        return rc;
    pre = *res;
    compare(c, res, 0, &rebuild, &highest);
    if (rebuild && (c->fix & INS_CHECK_FIX_ERRORS)) {
        struct ins_check_result old = *res, saved;
        unsigned fix = c->fix;
        int64_t fresh_leaks = 0;

        ins_check_logf(&c->log, "Rebuilding refcount structure");
        rc = rebuild_structure(c, res);
        if (rc < 0)
            return rc;
        res->corruptions = 0;
        res->leaks = 0;
        /* The references are counted again against the new structure. */
        rebuild = 0;
        c->fix = 0;
        rc = calculate(c, res, &rebuild);
        c->fix = fix;
        if (rc < 0)
            return rc;
        if (fix & INS_CHECK_FIX_LEAKS) {
            /* The old structure is leaked now: free it. */
            saved = *res;
            memset(res, 0, sizeof(*res));
            compare(c, res, INS_CHECK_FIX_LEAKS, &rebuild, &highest);
            if (rebuild)
                ins_check_logf(&c->log, "ERROR rebuilt refcount structure is "
                              "still broken");
            fresh_leaks = res->leaks;
            *res = saved;
            rc = ins_flush(c->bd);
            if (rc < 0) {
                res->check_errors++;
                return rc;
            }
        }
        if (res->corruptions < old.corruptions)
            res->corruptions_fixed += old.corruptions - res->corruptions;
        if (res->leaks < old.leaks)
            res->leaks_fixed += old.leaks - res->leaks;
        res->leaks += fresh_leaks;
    } else if (c->fix) {
        if (rebuild) {
            ins_check_logf(&c->log, "ERROR need to rebuild refcount structures");
            res->check_errors++;
            return INS_EIO;
        }
        if (res->leaks || res->corruptions) {
            *res = pre;
            compare(c, res, c->fix, &rebuild, &highest);
            rc = ins_flush(c->bd);
            if (rc < 0) {
                res->check_errors++;
                return rc;
            }
        }
    }
    rc = check_copied(c, res);
    if (rc < 0)
        return rc;
    res->image_end_offset = (highest + 1) * (int64_t)c->cs;
    return INS_OK;
}

/* qcow2_mark_clean() and qcow2_mark_consistent(): clear the dirty and
 * corrupt bits once everything before is durable. */
static int mark_clean(struct chk *c)
{
    struct qcow2_image *st = c->st;
    uint64_t bits = QCOW2_INCOMPAT_DIRTY | QCOW2_INCOMPAT_CORRUPT;
    uint8_t b[8];
    int rc;

    if (st->version < 3 || !(st->incompatible_features & bits))
        return INS_OK;
    rc = ins_flush(c->bd);
    if (rc < 0)
        return rc;
    st->incompatible_features &= ~bits;
    put_be64(b, st->incompatible_features);
    rc = ins_write(c->bd, b, 8, 72);
    if (rc == INS_OK)
        rc = ins_flush(c->bd);
    return rc;
}

/* ---- rewriting the snapshot table ---- */

/*
 * qcow2_alloc_clusters() as check uses it: the first n free clusters by
 * the on-disk refcounts (qemu's free cluster index is 0 here), taken by
 * raising their refcounts.  Clusters without a refcount block are not
 * allocated (qemu would add a block): INS_ENOTSUP.
 */
static int64_t alloc_on_disk(struct chk *c, uint64_t n)
{
    uint64_t start = 0, k, r;
    int rc;

    for (k = 0; k - start < n; k++) {
        uint64_t off;

        rc = rb_load(c, k, &off);
        if (rc < 0)
            return rc;
        if (!off)
            return INS_ENOTSUP;
        rc = get_refcount(c, k, &r);
        if (rc < 0)
            return rc;
        if (r)
            start = k + 1;
    }
    for (k = start; k < start + n; k++) {
        rc = set_refcount(c, k, 1);
        if (rc < 0)
            return rc;
    }
    rc = rb_writeback(c);
    return rc < 0 ? rc : (int64_t)(start << c->cb);
}

/* qcow2_free_clusters() of a range whose refcounts are positive. */
static int free_on_disk(struct chk *c, uint64_t off, uint64_t len)
{
    uint64_t k, r;
    int rc;

    if (!len)
        return INS_OK;
    for (k = off >> c->cb; k <= (off + len - 1) >> c->cb; k++) {
        rc = get_refcount(c, k, &r);
        if (rc < 0)
            return rc;
        if (r) {
            rc = set_refcount(c, k, r - 1);
            if (rc < 0)
                return rc;
        }
    }
    return rb_writeback(c);
}

/* One entry as qemu writes it, from the entry read (at most 64 KiB + 1 KiB). */
static int snap_entry(struct chk *c, const struct csnap *sn, uint8_t *out,
                      size_t *len)
{
    uint8_t h[QCOW2_SNAPSHOT_HEADER_SIZE], extra[24];
    uint32_t orig_extra, known, unknown;
    uint64_t vm_state;
    size_t idl = strlen(sn->id), nl = strlen(sn->name), p = 0;
    int rc = cread(c, h, sizeof(h), sn->at);

    if (rc < 0)
        return rc;
    orig_extra = ins_be32(h + 36);
    known = orig_extra < 24 ? orig_extra : 24;
    memset(extra, 0, sizeof(extra));
    rc = cread(c, extra, known, sn->at + sizeof(h));
    if (rc < 0)
        return rc;
    vm_state = orig_extra >= 8 ? ins_be64(extra) : ins_be32(h + 32);
    if (orig_extra < 16)
        put_be64(extra + 8, c->st->base.virtual_size);
    if (orig_extra < 24)
        put_be64(extra + 16, UINT64_MAX);
    put_be64(extra, vm_state);
    unknown = sn->extra_size > 24 ? sn->extra_size - 24 : 0;
    memcpy(out, h, 32);
    put_be32(out + 32, vm_state <= 0xffffffffu ? (uint32_t)vm_state : 0);
    put_be32(out + 36, 24 + unknown);
    out[12] = (uint8_t)(idl >> 8);
    out[13] = (uint8_t)idl;
    out[14] = (uint8_t)(nl >> 8);
    out[15] = (uint8_t)nl;
    p = sizeof(h);
    memcpy(out + p, extra, 24);
    p += 24;
    if (unknown) {
        rc = cread(c, out + p, unknown, sn->at + sizeof(h) + 24);
        if (rc < 0)
            return rc;
        p += unknown;
    }
    memcpy(out + p, sn->id, idl);
    p += idl;
    memcpy(out + p, sn->name, nl);
    p += nl;
    *len = p;
    return INS_OK;
}

/* qcow2_write_snapshots(): a new table in newly allocated clusters, made
 * durable before the header points at it; then the old one is freed. */
static int write_snapshots(struct chk *c)
{
    uint64_t size = 0, off, pos;
    uint8_t *buf = NULL, hdr[12];
    int64_t at = -1;
    uint32_t i;
    size_t len;
    int rc;

    for (i = 0; i < c->nb_snaps; i++) {
        const struct csnap *sn = &c->snaps[i];

        size = (size + 7) & ~7ull;
        size += QCOW2_SNAPSHOT_HEADER_SIZE + (sn->extra_size > 24 ? sn->extra_size : 24) +
                strlen(sn->id) + strlen(sn->name);
        if (size > QCOW2_MAX_SNAPSHOTS_SIZE)
            return INS_EFBIG;
    }
    /* An empty table takes no cluster: the header gets offset 0. */
    at = size ? alloc_on_disk(c, (size + c->cs - 1) >> c->cb) : 0;
    if (at < 0)
        return (int)at;
    rc = ins_flush(c->bd);
    if (rc == INS_OK)
        rc = overlap_check(c, (uint64_t)at, size);
    buf = ins_malloc(c->ctx, QCOW2_SNAPSHOT_HEADER_SIZE + 1024 + 2 * 65536 + 8);
    if (!buf && rc == INS_OK)
        rc = INS_ENOMEM;
    for (i = 0, pos = (uint64_t)at; rc == INS_OK && i < c->nb_snaps; i++) {
        pos = (pos + 7) & ~7ull;
        rc = snap_entry(c, &c->snaps[i], buf, &len);
        if (rc == INS_OK)
            rc = ins_write(c->bd, buf, len, pos);
        pos += len;
    }
    ins_free(c->ctx, buf);
    if (rc == INS_OK)
        rc = ins_flush(c->bd);
    if (rc < 0)
        goto fail;
    put_be32(hdr, c->nb_snaps);
    put_be64(hdr + 4, (uint64_t)at);
    rc = ins_write(c->bd, hdr, sizeof(hdr), 60);
    if (rc == INS_OK)
        rc = ins_flush(c->bd);
    if (rc < 0)
        goto fail;
    off = c->snapshots_offset;
    rc = free_on_disk(c, off, c->snapshots_size);
    c->snapshots_offset = (uint64_t)at;
    c->snapshots_size = size;
    if (rc == INS_OK)
        rc = ins_flush(c->bd);
    return rc;
fail:
    free_on_disk(c, (uint64_t)at, size);
    return rc;
}

/* qcow2_check_fix_snapshot_table() */
static int fix_snapshot_table(struct chk *c, struct ins_check_result *res)
{
    int rc;

    if (!res->corruptions || !(c->fix & INS_CHECK_FIX_ERRORS))
        return INS_OK;
    rc = write_snapshots(c);
    if (rc < 0) {
        res->check_errors++;
        ins_check_logf(&c->log, "ERROR failed to update snapshot table: %s",
                       err_text(rc));
        return rc;
    }
    res->corruptions_fixed += res->corruptions;
    res->corruptions = 0;
    return INS_OK;
}

static void add_result(struct ins_check_result *out,
                       const struct ins_check_result *src, int alloc_info)
{
    out->corruptions += src->corruptions;
    out->leaks += src->leaks;
    out->check_errors += src->check_errors;
    out->corruptions_fixed += src->corruptions_fixed;
    out->leaks_fixed += src->leaks_fixed;
    if (alloc_info) {
        out->image_end_offset = src->image_end_offset;
        out->total_clusters = src->total_clusters;
        out->allocated_clusters = src->allocated_clusters;
        out->fragmented_clusters = src->fragmented_clusters;
        out->compressed_clusters = src->compressed_clusters;
    }
}

static void chk_free(struct chk *c)
{
    ins_check_log_free(&c->log);
    ins_free(c->ctx, c->memo);
    ins_free(c->ctx, c->memo_idx);
    free_snaps(c);
    ins_free(c->ctx, c->imrt);
    ins_free(c->ctx, c->reftable);
    ins_free(c->ctx, c->rb);
    ins_free(c->ctx, c->l2);
    ins_free(c->ctx, c->l1);
}

/* qcow2_co_check_locked() */
int qcow2_check(struct ins_image *img, unsigned fix,
                struct ins_check_result *res)
{
    struct qcow2_image *st = (struct qcow2_image *)img;
    struct ins_check_result snap_res, ref_res;
    struct chk c;
    int rc;

    memset(res, 0, sizeof(*res));
    memset(&snap_res, 0, sizeof(snap_res));
    memset(&ref_res, 0, sizeof(ref_res));
    memset(&c, 0, sizeof(c));
    c.st = st;
    c.ctx = img->ctx;
    c.bd = img->file;
    c.fix = ins_writable(img->file) ? fix : 0;
    c.cs = st->cluster_size;
    c.cb = st->cluster_bits;
    c.order = st->refcount_order;
    c.refcount_max = c.order == 6 ? UINT64_MAX : (1ull << (1u << c.order)) - 1;
    c.l2_esize = st->extended_l2 ? 16 : 8;
    c.l2_entries = (uint32_t)(c.cs / c.l2_esize);
    c.data_file = (st->incompatible_features & QCOW2_INCOMPAT_DATA_FILE) != 0;
    c.file_len = (int64_t)ins_file_length(img->file);
    c.imrt_esize = c.order <= 3 ? 1 : 1u << (c.order - 3);
    c.rb_bits = c.cb + 3 - c.order;
    ins_check_log_init(&c.log, c.ctx);
    c.l2 = ins_malloc(c.ctx, c.cs);
    c.rb = ins_malloc(c.ctx, c.cs);
    if (!c.l2 || !c.rb) {
        rc = INS_ENOMEM;
        goto out;
    }

    rc = check_read_snapshots(&c, &snap_res);
    if (rc < 0) {
        add_result(res, &snap_res, 0);
        goto out;
    }
    rc = load_reftable(&c);
    if (rc < 0) {
        ref_res.check_errors++;
        add_result(res, &ref_res, 1);
        add_result(res, &snap_res, 0);
        goto out;
    }
    rc = check_refcounts(&c, &ref_res);
    add_result(res, &ref_res, 1);
    if (rc < 0) {
        add_result(res, &snap_res, 0);
        goto out;
    }
    rc = fix_snapshot_table(&c, &snap_res);
    add_result(res, &snap_res, 0);
    if (rc < 0)
        goto out;
    if (c.fix && res->check_errors == 0 && res->corruptions == 0)
        rc = mark_clean(&c);
out:
    chk_free(&c);
    return rc;
}

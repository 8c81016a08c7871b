/*
 * qcow2_write.c - writing qcow2 images as qemu-img writes them.
 *
 * Where qemu puts each cluster follows from its allocator: first fit from
 * a moving "free cluster index", refcount blocks placed where the cluster
 * that needs them would have gone (so they describe themselves), the
 * refcount table grown by qcow2_refcount_area(), and an L2 table always
 * allocated just before the first data cluster it maps.  We replay that
 * allocator over an in-memory refcount array, so that for the same
 * options and the same writes in the same order (convert writes in guest
 * order) the file has the same layout, and usually the same bytes.
 *
 * Metadata lives in memory until finish(): the L1 table, the refcounts
 * (two bytes per host cluster) and the refcount table; of the L2 tables
 * only the one being filled (writes ascend, so each is finished once the
 * writes move past it; preallocated ones are read back when needed).
 */
#include <string.h>
#include <zlib.h>
#include <zstd.h>

#include "qcow2.h"
#include "writer.h"

#define L2E_COMPRESSED  QCOW2_OFLAG_COMPRESSED
#define L2E_COPIED      QCOW2_OFLAG_COPIED
#define L2E_ZERO        QCOW2_OFLAG_ZERO
#define MAX_REFCOUNT_CLUSTERS (64ull << 20)  /* 128 MiB of refcounts */

struct q2w {
    struct ins_wimage w;
    int version;
    unsigned cluster_bits;
    uint64_t cs;                /* cluster size */
    unsigned refcount_order;
    uint64_t refcount_max;      /* what qemu's refcount width allows */
    uint64_t rb_entries;        /* refcounts per refcount block */
    int extl2, lazy, ztype;
    int prealloc_meta, prealloc_full;
    int compressed;             /* a compressed cluster was written */
    int opened;                 /* an existing image (convert -n) */
    unsigned l2e_size;          /* 8, or 16 with extended L2 */
    uint64_t l2_entries;        /* entries per L2 table */
    unsigned csize_shift;       /* compressed entry: sector count position */
    uint64_t csize_mask;

    uint64_t *l1;
    uint64_t l1_size, l1_offset;

    uint64_t *reftable;         /* host offsets of refcount blocks */
    uint64_t reftable_size;     /* entries (a multiple of cs / 8) */
    uint64_t reftable_offset;

    uint16_t *rc;               /* refcount per host cluster */
    uint64_t rc_len;
    uint64_t free_index;        /* qemu's free_cluster_index */
    uint64_t free_byte_offset;  /* compressed clusters' packing point */

    int64_t cur_l2;             /* L1 index of the L2 table in l2buf, or -1 */
    uint8_t *l2buf;
    int l2_dirty;

    uint8_t *pad;               /* one zeroed cluster */
    const char *backing, *backing_fmt;
};

static void put_be64(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--) {
        p[i] = (uint8_t)v;
        v >>= 8;
    }
}

/* ---- the allocator (qcow2-refcount.c's, replayed) ---- */

static uint64_t get_rc(const struct q2w *q, uint64_t idx)
{
    /* No refcount block yet: the cluster is free. */
    uint64_t t = idx / q->rb_entries;

    if (t >= q->reftable_size || !q->reftable[t] || idx >= q->rc_len)
        return 0;
    return q->rc[idx];
}

static int grow_rc(struct q2w *q, uint64_t idx)
{
    uint64_t len = q->rc_len ? q->rc_len : 1024;
    uint16_t *n;

    if (idx < q->rc_len)
        return INS_OK;
    while (len <= idx)
        len *= 2;
    if (len > MAX_REFCOUNT_CLUSTERS)
        return ins_error(q->w.ctx, INS_EFBIG, "Image is too large for "
                         "instar's qcow2 writer (too many clusters)");
    n = ins_realloc(q->w.ctx, q->rc, len * sizeof(*n));
    if (!n)
        return ins_error(q->w.ctx, INS_ENOMEM, "Out of memory");
    memset(n + q->rc_len, 0, (len - q->rc_len) * sizeof(*n));
    q->rc = n;
    q->rc_len = len;
    return INS_OK;
}

static int set_rc(struct q2w *q, uint64_t idx, uint64_t v)
{
    int rc = grow_rc(q, idx);

    if (rc < 0)
        return rc;
    q->rc[idx] = (uint16_t)v;
    return INS_OK;
}

/* alloc_clusters_noref(): n free clusters from the free index on. */
static uint64_t alloc_noref(struct q2w *q, uint64_t n)
{
    uint64_t i;

retry:
    for (i = 0; i < n; i++) {
        uint64_t idx = q->free_index++;

        if (get_rc(q, idx) != 0)
            goto retry;
    }
    return (q->free_index - n) << q->cluster_bits;
}

static int update_refcount(struct q2w *q, uint64_t offset, uint64_t length,
                           int addend);

/* qcow2_refcount_metadata_size(): refcount blocks needed for clusters. */
static uint64_t refblocks_needed(const struct q2w *q, uint64_t clusters,
                                 int generous)
{
    uint64_t per_table = q->cs / 8, table = 0, blocks = 0, n = 0, last;

    do {
        last = n;
        blocks = (clusters + table + blocks + q->rb_entries - 1) / q->rb_entries;
        table = (blocks + per_table - 1) / per_table;
        n = clusters + blocks + table;
        if (n == last && generous) {
            clusters += (table + 1) / 2;
            n = 0;
            generous = 0;
        }
    } while (n != last);
    return blocks;
}

/* qcow2_refcount_area(): a bigger refcount table and the refcount blocks
 * describing it, self-describing, at start. */
static int refcount_area(struct q2w *q, uint64_t start, uint64_t additional,
                         int exact, uint64_t new_index, uint64_t new_block,
                         uint64_t *area_end)
{
    uint64_t total = refblocks_needed(q, start / q->cs + additional, !exact);
    uint64_t area_index = (start / q->cs) / q->rb_entries;
    uint64_t table_size, table_clusters, extra = 0, i, block_offset;
    uint64_t table_offset, end_offset, old_offset, old_size, max_used = 0;
    uint64_t *nt;
    int rc;

    if (total > QCOW2_MAX_REFTABLE_SIZE / 8)
        return ins_error(q->w.ctx, INS_EFBIG, "refcount table too large");
    table_size = exact ? total : total + (total + 1) / 2;
    table_size = (table_size + q->cs / 8 - 1) / (q->cs / 8) * (q->cs / 8);
    table_clusters = table_size * 8 / q->cs;
    if (table_size > QCOW2_MAX_REFTABLE_SIZE / 8)
        return ins_error(q->w.ctx, INS_EFBIG, "refcount table too large");
    nt = ins_calloc(q->w.ctx, table_size, sizeof(*nt));
    if (!nt)
        return ins_error(q->w.ctx, INS_ENOMEM, "Out of memory");
    for (i = 0; i < q->reftable_size; i++)
        if (q->reftable[i])
            max_used = i;
    memcpy(nt, q->reftable, (max_used + 1 < table_size ? max_used + 1 : table_size)
                            * sizeof(*nt));
    if (new_block)
        nt[new_index] = new_block;
    for (i = area_index; i < total; i++)
        if (!nt[i])
            extra++;
    table_offset = start + extra * q->cs;
    end_offset = table_offset + table_clusters * q->cs;
    block_offset = start;
    for (i = area_index; i < total; i++) {
        uint64_t first, j, end;

        if (!nt[i]) {
            nt[i] = block_offset;
            block_offset += q->cs;
        }
        first = i * q->rb_entries * q->cs;
        if (first < end_offset) {
            j = first < start ? (start - first) / q->cs : 0;
            end = (end_offset - first) / q->cs;
            if (end > q->rb_entries)
                end = q->rb_entries;
            for (; j < end; j++) {
                rc = set_rc(q, i * q->rb_entries + j, 1);
                if (rc < 0) {
                    ins_free(q->w.ctx, nt);
                    return rc;
                }
            }
        }
    }
    old_offset = q->reftable_offset;
    old_size = q->reftable_size;
    ins_free(q->w.ctx, q->reftable);
    q->reftable = nt;
    q->reftable_size = table_size;
    q->reftable_offset = table_offset;
    if (area_end)
        *area_end = end_offset;
    /* The old table is freed (its clusters become the first free ones). */
    return update_refcount(q, old_offset, old_size * 8, -1);
}

/* alloc_refcount_block() for cluster idx: 0 when its block exists, 1 when
 * one was made (qemu's -EAGAIN: the caller searches again), or INS_E*. */
static int alloc_refblock(struct q2w *q, uint64_t idx)
{
    uint64_t t = idx / q->rb_entries, new_block, nb, used;
    int rc;

    if (t < q->reftable_size && q->reftable[t])
        return 0;
    new_block = alloc_noref(q, 1);
    nb = new_block >> q->cluster_bits;
    if (nb / q->rb_entries == t) {
        /* The block describes itself. */
        rc = set_rc(q, nb, 1);
    } else {
        /* Described by another block (which may have to be made first). */
        rc = update_refcount(q, new_block, q->cs, 1);
    }
    if (rc != 0)
        return rc;
    if (t < q->reftable_size) {
        uint8_t e[8];

        /* qemu writes the entry through at once; a table replaced later
         * keeps it in its freed cluster, so the bytes matter. */
        q->reftable[t] = new_block;
        put_be64(e, new_block);
        rc = ins_write(q->w.out, e, 8, q->reftable_offset + t * 8);
        return rc < 0 ? rc : 1;
    }
    /* The refcount table is full: a bigger one, past everything so far. */
    used = ((idx > nb ? idx : nb) + 1 + q->rb_entries - 1) / q->rb_entries;
    rc = refcount_area(q, used * q->rb_entries * q->cs, 0, 0, t, new_block, NULL);
    return rc < 0 ? rc : 1;
}

/* update_refcount(): adds addend to every cluster of the range; undoes
 * itself and returns 1 when a refcount block had to be made first. */
static int update_refcount(struct q2w *q, uint64_t offset, uint64_t length,
                           int addend)
{
    uint64_t start, last, c;
    int rc = 0;

    if (length == 0)
        return INS_OK;
    start = offset >> q->cluster_bits;
    last = (offset + length - 1) >> q->cluster_bits;
    for (c = start; c <= last; c++) {
        uint64_t v;

        rc = alloc_refblock(q, c);
        if (rc != 0)
            break;
        v = get_rc(q, c);
        if (addend < 0 && v == 0)
            return ins_error(q->w.ctx, INS_EINVAL, "refcount underflow");
        v = addend < 0 ? v - 1 : v + 1;
        rc = set_rc(q, c, v);
        if (rc < 0)
            return rc;
        if (v == 0 && c < q->free_index)
            q->free_index = c;
    }
    if (rc != 0 && c > start) {
        int r2 = update_refcount(q, offset, (c - start) << q->cluster_bits,
                                 -addend);

        if (r2 < 0)
            return r2;
    }
    return rc;
}

/* qcow2_alloc_clusters(). */
static int alloc_clusters(struct q2w *q, uint64_t n, uint64_t *off)
{
    int rc;

    do {
        *off = alloc_noref(q, n);
        rc = update_refcount(q, *off, n << q->cluster_bits, 1);
    } while (rc == 1);
    return rc;
}

/* qcow2_alloc_bytes(): packs compressed clusters. */
static int alloc_bytes(struct q2w *q, uint64_t size, uint64_t *out)
{
    uint64_t offset = q->free_byte_offset, free_in;
    uint64_t max = q->refcount_max < 0xffff ? q->refcount_max : 0xffff;
    int rc;

    if (offset && get_rc(q, offset >> q->cluster_bits) >= max)
        offset = 0;
    free_in = q->cs - (offset & (q->cs - 1));
    do {
        if (!offset || free_in < size) {
            uint64_t nc = alloc_noref(q, 1);

            if (!offset || ((offset + q->cs - 1) & ~(q->cs - 1)) != nc) {
                offset = nc;
                free_in = q->cs;
            } else {
                free_in += q->cs;
            }
        }
        rc = update_refcount(q, offset, size, 1);
        if (rc == 1)
            offset = 0;
    } while (rc == 1);
    if (rc < 0)
        return rc;
    q->free_byte_offset = offset + size;
    if (!(q->free_byte_offset & (q->cs - 1)))
        q->free_byte_offset = 0;
    *out = offset;
    return INS_OK;
}

/* ---- L2 tables ---- */

static uint64_t l2_get(const struct q2w *q, uint64_t i, uint64_t *bitmap)
{
    const uint8_t *p = q->l2buf + i * q->l2e_size;

    if (bitmap)
        *bitmap = q->extl2 ? ins_be64(p + 8) : 0;
    return ins_be64(p);
}

static void l2_set(struct q2w *q, uint64_t i, uint64_t entry, uint64_t bitmap)
{
    uint8_t *p = q->l2buf + i * q->l2e_size;

    put_be64(p, entry);
    if (q->extl2)
        put_be64(p + 8, bitmap);
    q->l2_dirty = 1;
}

static int l2_flush(struct q2w *q)
{
    int rc;

    if (q->cur_l2 < 0 || !q->l2_dirty)
        return INS_OK;
    rc = ins_write(q->w.out, q->l2buf, q->cs,
                   q->l1[q->cur_l2] & QCOW2_L1E_OFFSET_MASK);
    if (rc == 0)
        q->l2_dirty = 0;
    return rc;
}

/* Makes the L2 table of L1 index i current, allocating it if asked. */
static int l2_load(struct q2w *q, uint64_t i, int alloc)
{
    uint64_t off;
    int rc;

    if (q->cur_l2 != (int64_t)i) {
        rc = l2_flush(q);
        if (rc < 0)
            return rc;
        q->cur_l2 = -1;
        off = q->l1[i] & QCOW2_L1E_OFFSET_MASK;
        if (off) {
            rc = ins_read(q->w.out, q->l2buf, q->cs, off);
            if (rc < 0)
                return rc;
        } else {
            memset(q->l2buf, 0, q->cs);
        }
        q->cur_l2 = (int64_t)i;
    }
    if (alloc && !(q->l1[i] & QCOW2_L1E_OFFSET_MASK)) {
        rc = alloc_clusters(q, 1, &off);
        if (rc < 0)
            return rc;
        q->l1[i] = off | L2E_COPIED;
        q->l2_dirty = 1;
    }
    return INS_OK;
}

/* ---- create ---- */

static const char *opt_str(const struct tree *opts, const char *key)
{
    return opts ? tree_get_str(opts, key) : NULL;
}

static uint64_t opt_uint(const struct tree *opts, const char *key, uint64_t def)
{
    const struct tree *t = opts ? tree_get(opts, key) : NULL;

    if (t && t->type == TREE_UINT)
        return t->v.u;
    if (t && t->type == TREE_INT && t->v.i >= 0)
        return (uint64_t)t->v.i;
    return def;
}

static int opt_bool(const struct tree *opts, const char *key, int def)
{
    const struct tree *t = opts ? tree_get(opts, key) : NULL;

    return t && t->type == TREE_BOOL ? t->v.b : def;
}

static size_t header_ext(uint8_t *p, uint32_t magic, const void *data,
                         size_t len)
{
    size_t padded = (len + 7) & ~(size_t)7;

    p[0] = (uint8_t)(magic >> 24);
    p[1] = (uint8_t)(magic >> 16);
    p[2] = (uint8_t)(magic >> 8);
    p[3] = (uint8_t)magic;
    p[4] = (uint8_t)(len >> 24);
    p[5] = (uint8_t)(len >> 16);
    p[6] = (uint8_t)(len >> 8);
    p[7] = (uint8_t)len;
    if (len)
        memcpy(p + 8, data, len);
    return 8 + padded;
}

/* The feature name table qemu writes for v3 images with clusters > 4k. */
static size_t feature_table(uint8_t *p)
{
    static const struct { uint8_t type, bit; const char *name; } f[] = {
        { 0, 0, "dirty bit" }, { 0, 1, "corrupt bit" },
        { 0, 2, "external data file" }, { 0, 3, "compression type" },
        { 0, 4, "extended L2 entries" }, { 1, 0, "lazy refcounts" },
        { 2, 0, "bitmaps" }, { 2, 1, "raw external data" },
    };
    uint8_t table[8 * 48];

    memset(table, 0, sizeof(table));
    for (size_t i = 0; i < 8; i++) {
        table[i * 48] = f[i].type;
        table[i * 48 + 1] = f[i].bit;
        memcpy(table + i * 48 + 2, f[i].name, strlen(f[i].name));
    }
    return header_ext(p, QCOW2_EXT_FEATURE_TABLE, table, sizeof(table));
}

/* qcow2_update_header(): the whole first cluster. */
static int write_header(struct q2w *q)
{
    uint8_t *h = ins_calloc(q->w.ctx, 1, q->cs);
    uint64_t incompat = 0, compat = 0;
    size_t pos;
    int rc;

    if (!h)
        return ins_error(q->w.ctx, INS_ENOMEM, "Out of memory");
    if (q->ztype)
        incompat |= QCOW2_INCOMPAT_COMPRESSION;
    if (q->extl2)
        incompat |= QCOW2_INCOMPAT_EXTL2;
    if (q->lazy)
        compat |= QCOW2_COMPAT_LAZY_REFCOUNTS;
    put_be64(h, (uint64_t)QCOW2_MAGIC << 32 | (uint32_t)q->version);
    /* backing_file_offset (8) and size (4) are filled below */
    h[20] = 0; h[21] = 0; h[22] = 0; h[23] = (uint8_t)q->cluster_bits;
    put_be64(h + 24, q->w.virtual_size);
    /* crypt_method 0 */
    h[36] = (uint8_t)(q->l1_size >> 24);
    h[37] = (uint8_t)(q->l1_size >> 16);
    h[38] = (uint8_t)(q->l1_size >> 8);
    h[39] = (uint8_t)q->l1_size;
    put_be64(h + 40, q->l1_offset);
    put_be64(h + 48, q->reftable_offset);
    {
        uint32_t c = (uint32_t)(q->reftable_size * 8 / q->cs);

        h[56] = (uint8_t)(c >> 24);
        h[57] = (uint8_t)(c >> 16);
        h[58] = (uint8_t)(c >> 8);
        h[59] = (uint8_t)c;
    }
    /* nb_snapshots, snapshots_offset: 0 */
    if (q->version >= 3) {
        put_be64(h + 72, incompat);
        put_be64(h + 80, compat);
        put_be64(h + 88, 0);
        h[99] = (uint8_t)q->refcount_order;
        h[103] = QCOW2_HEADER_SIZE;
        h[104] = (uint8_t)q->ztype;
        pos = QCOW2_HEADER_SIZE;
    } else {
        pos = QCOW2_V2_HEADER_LENGTH;
    }
    if (q->backing_fmt)
        pos += header_ext(h + pos, QCOW2_EXT_BACKING_FMT, q->backing_fmt,
                          strlen(q->backing_fmt));
    if (q->version >= 3 && q->cs > 4096)
        pos += feature_table(h + pos);
    pos += header_ext(h + pos, QCOW2_EXT_END, NULL, 0);
    if (q->backing) {
        size_t len = strlen(q->backing);

        memcpy(h + pos, q->backing, len);
        put_be64(h + 8, pos);
        h[16] = (uint8_t)(len >> 24);
        h[17] = (uint8_t)(len >> 16);
        h[18] = (uint8_t)(len >> 8);
        h[19] = (uint8_t)len;
    }
    rc = ins_write(q->w.out, h, q->cs, 0);
    ins_free(q->w.ctx, h);
    return rc;
}

/* preallocate_co() for preallocation=metadata: every cluster allocated,
 * L2 table by L2 table. */
static int preallocate(struct q2w *q)
{
    uint64_t nclusters = (q->w.virtual_size + q->cs - 1) >> q->cluster_bits;
    uint64_t c = 0, last_end = 0;
    int rc;

    while (c < nclusters) {
        uint64_t l1i = c / q->l2_entries, first = c % q->l2_entries;
        uint64_t n = q->l2_entries - first, off, i;

        if (n > nclusters - c)
            n = nclusters - c;
        rc = l2_load(q, l1i, 1);
        if (rc == 0)
            rc = alloc_clusters(q, n, &off);
        if (rc < 0)
            return rc;
        for (i = 0; i < n; i++) {
            uint64_t bitmap = 0;

            if (q->extl2) {
                /* The whole cluster's subclusters, as the request covered. */
                bitmap = 0xffffffffu;
            }
            l2_set(q, first + i, (off + (i << q->cluster_bits)) | L2E_COPIED,
                   bitmap);
        }
        last_end = off + (n << q->cluster_bits);
        c += n;
    }
    rc = l2_flush(q);
    if (rc == 0 && last_end > q->w.out->size)
        rc = ins_truncate(q->w.out, last_end);
    return rc;
}

/* qcow2_co_truncate() for preallocation=falloc/full: a new refcount
 * table covering everything, then all data clusters in one run after it,
 * then the L2 tables wherever they fit (starting in the old table's
 * freed cluster). */
static int preallocate_full(struct q2w *q)
{
    uint64_t nclusters = (q->w.virtual_size + q->cs - 1) >> q->cluster_bits;
    uint64_t last = (q->w.out->size + q->cs - 1) / q->cs, start, end, c = 0;
    uint64_t nl2 = (nclusters + q->l2_entries - 1) / q->l2_entries + 1, done;
    int rc;

    while (last > 0 && get_rc(q, last - 1) == 0)
        last--;
    rc = refcount_area(q, last * q->cs, nclusters + nl2, 1, 0, 0, &start);
    if (rc < 0)
        return rc;
    do {
        rc = update_refcount(q, start, nclusters << q->cluster_bits, 1);
    } while (rc == 1);
    if (rc < 0)
        return rc;
    end = start + (nclusters << q->cluster_bits);
    /* The data area reads as zeros; allocate it as falloc/full would. */
    for (done = q->w.out->size > start ? q->w.out->size : start; done < end;) {
        uint64_t n = end - done < q->cs ? end - done : q->cs;

        rc = ins_write(q->w.out, q->pad, (size_t)n, done);
        if (rc < 0)
            return rc;
        done += n;
    }
    while (c < nclusters) {
        uint64_t first = c % q->l2_entries, n = q->l2_entries - first, i;

        if (n > nclusters - c)
            n = nclusters - c;
        rc = l2_load(q, c / q->l2_entries, 1);
        if (rc < 0)
            return rc;
        for (i = 0; i < n; i++)
            l2_set(q, first + i, (start + ((c + i) << q->cluster_bits)) | L2E_COPIED, 0);
        c += n;
    }
    return l2_flush(q);
}

static void q2w_free(struct q2w *q)
{
    struct ins_ctx *ctx = q->w.ctx;

    ins_free(ctx, q->l1);
    ins_free(ctx, q->reftable);
    ins_free(ctx, q->rc);
    ins_free(ctx, q->l2buf);
    ins_free(ctx, q->pad);
    ins_free(ctx, q);
}

static int q2w_create(struct ins_ctx *ctx, struct ins_bdev *out,
                      const struct ins_create *cr, struct ins_wimage **img)
{
    const struct tree *o = cr->opts;
    const char *compat = opt_str(o, "compat");
    const char *ctype = opt_str(o, "compression_type");
    const char *prealloc = opt_str(o, "preallocation");
    struct q2w *q;
    uint64_t cs = opt_uint(o, "cluster_size", 65536), l1_bytes, off;
    uint64_t refcount_bits = opt_uint(o, "refcount_bits", 16);
    uint64_t size;
    unsigned bits = 0;
    uint8_t *tables;
    int rc;

    /* qcow2_co_create_opts() rounds the size up to a sector. */
    if (cr->size > UINT64_MAX - 511)
        return ins_error(ctx, INS_EFBIG, "Image size too large");
    size = (cr->size + 511) & ~511ull;
    while (bits < 64 && (1ull << bits) < cs)
        bits++;
    if (bits < QCOW2_MIN_CLUSTER_BITS || bits > QCOW2_MAX_CLUSTER_BITS ||
        (1ull << bits) != cs)
        return ins_error(ctx, INS_EINVAL, "Cluster size must be a power of two "
                         "between 512 and 2048k");
    q = ins_calloc(ctx, 1, sizeof(*q));
    if (!q)
        return ins_error(ctx, INS_ENOMEM, "Out of memory");
    q->w.wr = &ins_wr_qcow2;
    q->w.ctx = ctx;
    q->w.out = out;
    q->w.virtual_size = size;
    q->w.zero_init = 1;
    q->cs = cs;
    q->cluster_bits = bits;
    q->version = compat && (strcmp(compat, "0.10") == 0 || strcmp(compat, "v2") == 0)
                     ? 2 : 3;
    q->refcount_order = 0;
    while ((1ull << q->refcount_order) < refcount_bits)
        q->refcount_order++;
    q->refcount_max = q->refcount_order >= 6 ? UINT64_MAX
                      : (1ull << (1u << q->refcount_order)) - 1;
    q->rb_entries = cs * 8 >> q->refcount_order;
    q->extl2 = opt_bool(o, "extended_l2", 0);
    q->lazy = opt_bool(o, "lazy_refcounts", 0);
    q->ztype = ctype && strcmp(ctype, "zstd") == 0;
    q->prealloc_meta = prealloc && strcmp(prealloc, "metadata") == 0;
    q->prealloc_full = prealloc && (strcmp(prealloc, "falloc") == 0 ||
                                    strcmp(prealloc, "full") == 0);
    q->l2e_size = q->extl2 ? 16 : 8;
    q->l2_entries = cs / q->l2e_size;
    q->w.granularity = q->extl2 ? cs / 32 : cs;
    q->w.cluster_size = cs;
    q->csize_shift = 62 - (bits - 8);
    q->csize_mask = (1ull << (bits - 8)) - 1;
    q->backing = cr->backing_file;
    q->backing_fmt = cr->backing_format;
    if (q->backing)
        q->w.zero_init = 0;
    q->cur_l2 = -1;

    /* size_to_l1() and qemu's L1 limit. */
    q->l1_size = (size + (q->l2_entries << bits) - 1) / (q->l2_entries << bits);
    if (q->l1_size > QCOW2_MAX_L1_SIZE / 8) {
        q2w_free(q);
        return ins_error(ctx, INS_EFBIG, "Could not resize image: The image "
                         "size is too large for file format 'qcow2' (try "
                         "using a larger cluster size)");
    }
    q->reftable_size = cs / 8;
    q->l1 = ins_calloc(ctx, q->l1_size ? q->l1_size : 1, 8);
    q->reftable = ins_calloc(ctx, q->reftable_size, 8);
    q->l2buf = ins_malloc(ctx, cs);
    q->pad = ins_calloc(ctx, 1, cs);
    tables = ins_calloc(ctx, 2, cs);
    if (!q->l1 || !q->reftable || !q->l2buf || !q->pad || !tables) {
        ins_free(ctx, tables);
        q2w_free(q);
        return ins_error(ctx, INS_ENOMEM, "Out of memory");
    }

    /* qcow2_co_create(): header, a refcount table with one block at
     * clusters 1 and 2, then those three clusters allocated. */
    q->reftable_offset = cs;
    q->reftable[0] = 2 * cs;
    put_be64(tables, 2 * cs);
    /* An empty file from the host: truncating it would only make ext4
     * flush it on close (auto_da_alloc). */
    rc = out->size ? ins_truncate(out, 0) : INS_OK;
    if (rc == 0)
        rc = write_header(q);
    if (rc == 0)
        rc = ins_write(out, tables, 2 * cs, cs);
    ins_free(ctx, tables);
    if (rc == 0)
        rc = alloc_clusters(q, 3, &off);
    /* Then the L1 table (qcow2_grow_l1_table). */
    if (rc == 0 && q->l1_size) {
        l1_bytes = q->l1_size * 8;
        rc = alloc_clusters(q, (l1_bytes + cs - 1) / cs, &q->l1_offset);
        if (rc == 0)
            rc = ins_write(out, q->l1, l1_bytes, q->l1_offset);
    }
    if (rc == 0 && q->prealloc_meta)
        rc = preallocate(q);
    if (rc == 0 && q->prealloc_full && q->w.virtual_size)
        rc = preallocate_full(q);
    if (rc == 0)
        rc = write_header(q);
    if (rc < 0) {
        q2w_free(q);
        return ctx->errmsg[0] ? rc : ins_error(ctx, rc, "Could not write qcow2 "
                                               "header: %s", ins_strerror(rc));
    }
    *img = &q->w;
    return INS_OK;
}


/* ---- convert -n: an existing image ---- */

static int open_fail(struct q2w *q, int rc, const char *msg)
{
    struct ins_ctx *ctx = q->w.ctx;

    q2w_free(q);
    return ins_error(ctx, rc, "%s", msg);
}

/* Loads the refcounts and checks that every mapped cluster may simply be
 * overwritten in place (no snapshots, no compressed or shared clusters):
 * anything else is refused rather than half-handled. */
static int load_existing(struct q2w *q)
{
    struct ins_bdev *out = q->w.out;
    uint64_t i, j, nclusters = (out->size + q->cs - 1) / q->cs;
    uint8_t *buf = ins_malloc(q->w.ctx, q->cs), *tab;
    int rc;

    if (!buf)
        return INS_ENOMEM;
    tab = ins_malloc(q->w.ctx, q->reftable_size * 8);
    if (!tab) {
        ins_free(q->w.ctx, buf);
        return INS_ENOMEM;
    }
    rc = ins_read(out, tab, q->reftable_size * 8, q->reftable_offset);
    for (i = 0; rc == 0 && i < q->reftable_size; i++) {
        uint64_t off = ins_be64(tab + i * 8) & QCOW2_L1E_OFFSET_MASK;

        q->reftable[i] = off;
        if (!off)
            continue;
        if (off % q->cs || off >= out->size) {
            rc = INS_EINVAL;
            break;
        }
        rc = ins_read(out, buf, q->cs, off);
        for (j = 0; rc == 0 && j < q->rb_entries; j++) {
            uint64_t idx = i * q->rb_entries + j, v = 0;
            unsigned w = 1u << q->refcount_order;

            if (w >= 8) {
                for (size_t k = 0; k < w / 8; k++)
                    v = v << 8 | buf[j * (w / 8) + k];
            } else {
                v = (buf[j * w / 8] >> (j * w % 8)) & ((1u << w) - 1);
            }
            if (v > 1 && idx < nclusters + q->rb_entries) {
                rc = INS_ENOTSUP;   /* shared clusters: snapshots */
            } else if (v) {
                rc = set_rc(q, idx, v);
            }
        }
    }
    for (i = 0; rc == 0 && i < q->l1_size; i++) {
        uint64_t l2 = q->l1[i] & QCOW2_L1E_OFFSET_MASK;

        if (!l2)
            continue;
        if (l2 % q->cs || l2 >= out->size || !(q->l1[i] & L2E_COPIED)) {
            rc = INS_ENOTSUP;
            break;
        }
        rc = ins_read(out, buf, q->cs, l2);
        for (j = 0; rc == 0 && j < q->l2_entries; j++) {
            uint64_t e = ins_be64(buf + j * q->l2e_size);

            if ((e & L2E_COMPRESSED) ||
                ((e & QCOW2_L2E_OFFSET_MASK) && !(e & L2E_COPIED)) ||
                (e & QCOW2_L2E_OFFSET_MASK) >= out->size)
                rc = INS_ENOTSUP;
        }
    }
    ins_free(q->w.ctx, tab);
    ins_free(q->w.ctx, buf);
    return rc;
}

static int q2w_open(struct ins_ctx *ctx, struct ins_bdev *out,
                    struct ins_wimage **img)
{
    uint8_t h[QCOW2_HEADER_SIZE];
    struct q2w *q;
    uint64_t incompat = 0, rt_clusters, l1_bytes;
    uint32_t version, bits;
    int rc;

    memset(h, 0, sizeof(h));
    rc = ins_read_zfill(out, h, sizeof(h), 0);
    if (rc < 0)
        return ins_error(ctx, rc, "Could not read qcow2 header");
    if (ins_be32(h) != QCOW2_MAGIC)
        return ins_error(ctx, INS_EINVAL, "Image is not in qcow2 format");
    version = ins_be32(h + 4);
    bits = ins_be32(h + 20);
    if (version < 2 || version > 3)
        return ins_error(ctx, INS_ENOTSUP, "Unsupported qcow2 version %u", version);
    if (bits < QCOW2_MIN_CLUSTER_BITS || bits > QCOW2_MAX_CLUSTER_BITS)
        return ins_error(ctx, INS_EINVAL, "Unsupported cluster size: 2^%u", bits);
    q = ins_calloc(ctx, 1, sizeof(*q));
    if (!q)
        return ins_error(ctx, INS_ENOMEM, "Out of memory");
    q->w.wr = &ins_wr_qcow2;
    q->w.ctx = ctx;
    q->w.out = out;
    q->w.virtual_size = ins_be64(h + 24);
    q->opened = 1;
    /* Only whether there is one matters (zeros need writing then); the
     * header, which names it, is left as it is. */
    if (ins_be64(h + 8))
        q->backing = "";
    q->version = (int)version;
    q->cluster_bits = bits;
    q->cs = 1ull << bits;
    q->refcount_order = 4;
    if (version >= 3) {
        incompat = ins_be64(h + 72);
        q->refcount_order = ins_be32(h + 96);
        q->lazy = (ins_be64(h + 80) & QCOW2_COMPAT_LAZY_REFCOUNTS) != 0;
        if (ins_be32(h + 100) > 104)
            q->ztype = h[104];
    }
    q->extl2 = (incompat & QCOW2_INCOMPAT_EXTL2) != 0;
    if (incompat & ~(uint64_t)(QCOW2_INCOMPAT_EXTL2 | QCOW2_INCOMPAT_COMPRESSION))
        return open_fail(q, INS_ENOTSUP, "convert -n into a qcow2 image that is "
                         "dirty, corrupt or has an external data file is not "
                         "supported");
    if (ins_be32(h + 32) || ins_be32(h + 60) || q->backing)
        return open_fail(q, INS_ENOTSUP, "convert -n into an encrypted qcow2 "
                         "image, one with snapshots or one with a backing file "
                         "is not supported");
    if (q->refcount_order > 6)
        return open_fail(q, INS_EINVAL, "Refcount width too large");
    q->refcount_max = q->refcount_order >= 6 ? UINT64_MAX
                      : (1ull << (1u << q->refcount_order)) - 1;
    q->rb_entries = q->cs * 8 >> q->refcount_order;
    q->l2e_size = q->extl2 ? 16 : 8;
    q->l2_entries = q->cs / q->l2e_size;
    q->w.granularity = q->extl2 ? q->cs / 32 : q->cs;
    q->w.cluster_size = q->cs;
    q->csize_shift = 62 - (bits - 8);
    q->csize_mask = (1ull << (bits - 8)) - 1;
    q->cur_l2 = -1;
    q->l1_size = ins_be32(h + 36);
    q->l1_offset = ins_be64(h + 40);
    q->reftable_offset = ins_be64(h + 48);
    rt_clusters = ins_be32(h + 56);
    l1_bytes = q->l1_size * 8;
    if (q->l1_size > QCOW2_MAX_L1_SIZE / 8 ||
        q->l1_size * (q->l2_entries << bits) < q->w.virtual_size ||
        rt_clusters == 0 || rt_clusters * q->cs > QCOW2_MAX_REFTABLE_SIZE ||
        q->reftable_offset % q->cs || q->l1_offset % 512 ||
        q->reftable_offset + rt_clusters * q->cs > out->size ||
        (l1_bytes && q->l1_offset + l1_bytes > out->size))
        return open_fail(q, INS_EINVAL, "Image is corrupt: bad L1 or refcount table");
    q->reftable_size = rt_clusters * q->cs / 8;
    q->l1 = ins_calloc(ctx, q->l1_size ? q->l1_size : 1, 8);
    q->reftable = ins_calloc(ctx, q->reftable_size, 8);
    q->l2buf = ins_malloc(ctx, q->cs);
    q->pad = ins_calloc(ctx, 1, q->cs);
    if (!q->l1 || !q->reftable || !q->l2buf || !q->pad)
        return open_fail(q, INS_ENOMEM, "Out of memory");
    if (l1_bytes) {
        uint8_t *b = ins_malloc(ctx, l1_bytes);

        if (!b)
            return open_fail(q, INS_ENOMEM, "Out of memory");
        rc = ins_read(out, b, l1_bytes, q->l1_offset);
        for (uint64_t i = 0; rc == 0 && i < q->l1_size; i++)
            q->l1[i] = ins_be64(b + i * 8);
        ins_free(ctx, b);
        if (rc < 0)
            return open_fail(q, rc, "Could not read L1 table");
    }
    rc = load_existing(q);
    if (rc == INS_ENOTSUP)
        return open_fail(q, rc, "convert -n into a qcow2 image with snapshots, "
                         "shared or compressed clusters is not supported");
    if (rc < 0)
        return open_fail(q, rc, "Image is corrupt: bad refcount or L2 table");
    *img = &q->w;
    return INS_OK;
}

/* ---- writing ---- */

/* Writes len bytes of guest data at host offset off, padded with zeros to
 * the granule as qemu's copy-on-write of the rest leaves it. */
static int put(struct q2w *q, const uint8_t *buf, uint64_t len, uint64_t off)
{
    uint64_t g = q->w.granularity, tail = len % g;
    int rc = ins_wdata(&q->w, buf, (size_t)len, off);

    if (rc == 0 && tail)
        rc = ins_wdata(&q->w, q->pad, (size_t)(g - tail), off + len);
    return rc;
}

static int q2w_write(struct ins_wimage *img, const void *buf, size_t len,
                     uint64_t offset)
{
    struct q2w *q = (struct q2w *)img;
    const uint8_t *p = buf;
    uint64_t end = offset + len;
    int rc;

    while (offset < end) {
        uint64_t c = offset >> q->cluster_bits;
        uint64_t l1i = c / q->l2_entries, first = c % q->l2_entries;
        uint64_t in_l2_end = (c - first + q->l2_entries) << q->cluster_bits;
        uint64_t stop = end < in_l2_end ? end : in_l2_end;
        uint64_t i, entry, bitmap, host;

        rc = l2_load(q, l1i, 1);
        if (rc < 0)
            return rc;
        entry = l2_get(q, first, &bitmap);
        host = entry & QCOW2_L2E_OFFSET_MASK;
        if (!host || (entry & L2E_COMPRESSED)) {
            /* A run of unallocated clusters gets one allocation. */
            uint64_t n = 1, cend;

            while (((c + n) << q->cluster_bits) < stop) {
                uint64_t e = l2_get(q, first + n, NULL);

                if ((e & QCOW2_L2E_OFFSET_MASK) && !(e & L2E_COMPRESSED))
                    break;
                n++;
            }
            rc = alloc_clusters(q, n, &host);
            if (rc < 0)
                return rc;
            cend = (c + n) << q->cluster_bits;
            if (cend > stop)
                cend = stop;
            for (i = 0; i < n; i++) {
                uint64_t cstart = (c + i) << q->cluster_bits, b = 0;

                if (q->extl2) {
                    uint64_t s0 = cstart > offset ? cstart : offset;
                    uint64_t s1 = cstart + q->cs < cend ? cstart + q->cs : cend;
                    uint64_t sc = q->cs / 32;

                    /* Written subclusters become allocated; the others
                     * keep what they were (zero, or unallocated). */
                    l2_get(q, first + i, &b);
                    b &= 0xffffffff00000000ull;
                    for (uint64_t k = (s0 - cstart) / sc; k < (s1 - cstart + sc - 1) / sc; k++)
                        b = (b | 1ull << k) & ~(1ull << (k + 32));
                }
                l2_set(q, first + i, (host + (i << q->cluster_bits)) | L2E_COPIED, b);
            }
            host += offset & (q->cs - 1);
            rc = put(q, p, cend - offset, host);
            if (rc < 0)
                return rc;
            p += cend - offset;
            offset = cend;
        } else {
            /* Allocated already (preallocation, or an earlier part). */
            uint64_t cend = (c + 1) << q->cluster_bits;

            if (cend > stop)
                cend = stop;
            if (q->extl2) {
                uint64_t sc = q->cs / 32, cstart = c << q->cluster_bits;

                for (uint64_t k = (offset - cstart) / sc; k < (cend - cstart + sc - 1) / sc; k++)
                    bitmap = (bitmap | 1ull << k) & ~(1ull << (k + 32));
                l2_set(q, first, entry, bitmap);
            }
            rc = put(q, p, cend - offset, host + (offset & (q->cs - 1)));
            if (rc < 0)
                return rc;
            p += cend - offset;
            offset = cend;
        }
    }
    return INS_OK;
}

/* Drops a cluster an L2 entry pointed to (qcow2_free_any_cluster()); a
 * cluster nobody uses any more is discarded in the file, as qemu passes
 * the discard down when convert opened the target with unmap. */
static int free_entry(struct q2w *q, uint64_t entry)
{
    uint64_t off = entry & QCOW2_L2E_OFFSET_MASK;
    int rc;

    if (entry & L2E_COMPRESSED) {
        uint64_t coff = entry & ((1ull << q->csize_shift) - 1);
        uint64_t nb = (entry >> q->csize_shift) & q->csize_mask;

        return update_refcount(q, coff & ~511ull, (nb + 1) * 512, -1);
    }
    if (!off)
        return INS_OK;
    rc = update_refcount(q, off, q->cs, -1);
    if (rc == 0 && get_rc(q, off >> q->cluster_bits) == 0)
        rc = ins_zero_range(q->w.out, off, q->cs);
    return rc;
}

/*
 * qcow2_co_pwrite_zeroes() with BDRV_REQ_MAY_UNMAP, as convert -n and
 * overlays issue it (granule-aligned): v3 images get zero flags (allocated
 * clusters are let go), v2 images without a backing file get the clusters
 * discarded, and v2 overlays get explicit zeros.
 */
static int q2w_write_zeroes(struct ins_wimage *img, uint64_t offset,
                            uint64_t len)
{
    struct q2w *q = (struct q2w *)img;
    uint64_t end = offset + len;
    int rc;

    if (offset % q->w.granularity ||
        (end % q->w.granularity && end < q->w.virtual_size)) {
        /* A partial granule: qemu zeroes the whole of it when the rest
         * reads as zeros already (unallocated, no backing file), and
         * otherwise falls back to writing zeros (INS_ENOTSUP here). */
        uint64_t g = q->w.granularity, c = offset >> q->cluster_bits, entry, bitmap;

        if ((offset / g) != ((end - 1) / g))
            return INS_ENOTSUP;
        rc = l2_load(q, c / q->l2_entries, 0);
        if (rc < 0)
            return rc;
        entry = l2_get(q, c % q->l2_entries, &bitmap);
        if (entry & L2E_COMPRESSED)
            return INS_ENOTSUP;
        if (q->extl2) {
            uint64_t k = (offset & (q->cs - 1)) / g;

            if ((bitmap >> k) & 1)
                return INS_ENOTSUP;
            if (q->backing && !((bitmap >> (32 + k)) & 1))
                return INS_ENOTSUP;
        } else if ((entry & QCOW2_L2E_OFFSET_MASK) ||
                   (q->backing && !(entry & L2E_ZERO))) {
            return INS_ENOTSUP;
        }
        offset = offset / g * g;
        end = offset + g < q->w.virtual_size ? offset + g : q->w.virtual_size;
    }
    if (q->version < 3 && q->backing) {
        while (offset < end) {
            uint64_t n = end - offset < q->cs ? end - offset : q->cs;

            rc = q2w_write(img, q->pad, (size_t)n, offset);
            if (rc < 0)
                return rc;
            offset += n;
        }
        return INS_OK;
    }
    while (offset < end) {
        uint64_t c = offset >> q->cluster_bits, cstart = c << q->cluster_bits;
        uint64_t cend = cstart + q->cs, entry, bitmap, i = c % q->l2_entries;
        uint64_t stop = end < cend ? end : cend;
        int whole = offset == cstart && (stop == cend || stop >= q->w.virtual_size);

        rc = l2_load(q, c / q->l2_entries, 1);
        if (rc < 0)
            return rc;
        entry = l2_get(q, i, &bitmap);
        if (!whole) {
            /* zero_l2_subclusters(): only with extended L2. */
            uint64_t sc = q->cs / 32, k0 = (offset - cstart) / sc;
            uint64_t k1 = (stop - cstart + sc - 1) / sc;

            if (!q->extl2 || (entry & L2E_COMPRESSED))
                return INS_ENOTSUP;
            for (uint64_t k = k0; k < k1; k++)
                bitmap = (bitmap | 1ull << (k + 32)) & ~(1ull << k);
            l2_set(q, i, entry, bitmap);
        } else if (q->version < 3) {
            /* discard_in_l2_slice() without a backing file. */
            if ((entry & QCOW2_L2E_OFFSET_MASK) || (entry & L2E_COMPRESSED)) {
                l2_set(q, i, 0, 0);
                rc = free_entry(q, entry);
            }
        } else {
            /* zero_in_l2_slice(). */
            int unmap = (entry & L2E_COMPRESSED) ||
                        (entry & QCOW2_L2E_OFFSET_MASK);
            uint64_t ne = unmap ? 0 : entry, nb = bitmap;

            if (q->extl2)
                nb = 0xffffffff00000000ull;
            else
                ne |= L2E_ZERO;
            if (ne != entry || nb != bitmap) {
                l2_set(q, i, ne, nb);
                if (unmap)
                    rc = free_entry(q, entry);
            }
        }
        if (rc < 0)
            return rc;
        offset = stop;
    }
    return INS_OK;
}

static void *z_alloc(void *opaque, unsigned items, unsigned size)
{
    return ins_calloc(opaque, items, size);
}

static void z_free(void *opaque, void *p)
{
    ins_free(opaque, p);
}

/* qcow2_co_compress(): raw deflate with a 4k window, or a zstd frame;
 * INS_EFBIG when the result would not fit (write it uncompressed). */
static int q2w_compress(const struct ins_wimage *img, const void *in,
                        size_t len, void *out, size_t out_cap,
                        size_t *out_len)
{
    const struct q2w *q = (const struct q2w *)img;

    /* qemu compresses a short last cluster zero-padded to a whole one;
     * the caller's buffer holds the padding (writer.h). */
    if (len < q->cs)
        len = (size_t)q->cs;
    if (q->ztype) {
        ZSTD_outBuffer ob = { out, out_cap, 0 };
        ZSTD_inBuffer ib = { in, len, 0 };
        ZSTD_CCtx *cctx = ZSTD_createCCtx();
        size_t zr;

        if (!cctx)
            return INS_ENOMEM;
        zr = ZSTD_compressStream2(cctx, &ob, &ib, ZSTD_e_end);
        ZSTD_freeCCtx(cctx);
        if (zr)
            return ZSTD_isError(zr) || zr <= ob.size - ob.pos ? INS_EIO : INS_EFBIG;
        *out_len = ob.pos;
        return INS_OK;
    } else {
        z_stream z;
        int zr;

        memset(&z, 0, sizeof(z));
        z.zalloc = z_alloc;
        z.zfree = z_free;
        z.opaque = img->ctx;
        if (deflateInit2(&z, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -12, 9,
                         Z_DEFAULT_STRATEGY) != Z_OK)
            return INS_ENOMEM;
        z.next_in = (Bytef *)(uintptr_t)in;
        z.avail_in = (uInt)len;
        z.next_out = out;
        z.avail_out = (uInt)out_cap;
        zr = deflate(&z, Z_FINISH);
        *out_len = out_cap - z.avail_out;
        deflateEnd(&z);
        if (zr == Z_STREAM_END)
            return INS_OK;
        return zr == Z_OK ? INS_EFBIG : INS_EIO;
    }
}

/* qcow2_alloc_compressed_cluster_offset() and the write. */
static int q2w_write_compressed(struct ins_wimage *img, const void *data,
                                size_t len, uint64_t offset)
{
    struct q2w *q = (struct q2w *)img;
    uint64_t c = offset >> q->cluster_bits, host, nb;
    int rc;

    rc = l2_load(q, c / q->l2_entries, 1);
    if (rc < 0)
        return rc;
    if (l2_get(q, c % q->l2_entries, NULL) & QCOW2_L2E_OFFSET_MASK)
        return ins_error(q->w.ctx, INS_EIO, "compressed write over an "
                         "allocated cluster");
    rc = alloc_bytes(q, len, &host);
    if (rc < 0)
        return rc;
    q->compressed = 1;
    nb = ((host + len - 1) >> 9) - (host >> 9);
    l2_set(q, c % q->l2_entries,
           host | L2E_COMPRESSED | ((nb & q->csize_mask) << q->csize_shift), 0);
    return ins_write(q->w.out, data, len, host);
}

/* Refcount blocks from the in-memory refcounts. */
static int write_refcounts(struct q2w *q)
{
    uint8_t *blk = ins_malloc(q->w.ctx, q->cs);
    uint64_t t;
    int rc = INS_OK;

    if (!blk)
        return ins_error(q->w.ctx, INS_ENOMEM, "Out of memory");
    for (t = 0; t < q->reftable_size && rc == 0; t++) {
        uint64_t base = t * q->rb_entries, j;

        if (!q->reftable[t])
            continue;
        memset(blk, 0, q->cs);
        for (j = 0; j < q->rb_entries; j++) {
            uint64_t v = base + j < q->rc_len ? q->rc[base + j] : 0;
            unsigned w = 1u << q->refcount_order;

            if (!v)
                continue;
            if (w >= 8) {
                size_t bytes = w / 8, pos = j * bytes;

                for (size_t k = 0; k < bytes; k++)
                    blk[pos + bytes - 1 - k] = (uint8_t)(k < 8 ? v >> (8 * k) : 0);
            } else {
                uint64_t bit = j * w;

                blk[bit / 8] |= (uint8_t)(v << (bit % 8));
            }
        }
        rc = ins_write(q->w.out, blk, q->cs, q->reftable[t]);
    }
    ins_free(q->w.ctx, blk);
    if (rc == 0) {
        uint8_t *tb = ins_calloc(q->w.ctx, q->reftable_size, 8);

        if (!tb)
            return ins_error(q->w.ctx, INS_ENOMEM, "Out of memory");
        for (t = 0; t < q->reftable_size; t++)
            put_be64(tb + t * 8, q->reftable[t]);
        rc = ins_write(q->w.out, tb, q->reftable_size * 8, q->reftable_offset);
        ins_free(q->w.ctx, tb);
    }
    return rc;
}

static int q2w_finish(struct ins_wimage *img)
{
    struct q2w *q = (struct q2w *)img;
    int rc = l2_flush(q);

    if (rc == 0 && q->l1_size) {
        uint8_t *b = ins_malloc(q->w.ctx, q->l1_size * 8);

        if (!b)
            return ins_error(q->w.ctx, INS_ENOMEM, "Out of memory");
        for (uint64_t i = 0; i < q->l1_size; i++)
            put_be64(b + i * 8, q->l1[i]);
        rc = ins_write(q->w.out, b, q->l1_size * 8, q->l1_offset);
        ins_free(q->w.ctx, b);
    }
    if (rc == 0)
        rc = write_refcounts(q);
    /* qemu-img ends a compressed convert by truncating the file to its
     * length as the block layer sees it: rounded up to 512 bytes. */
    if (rc == 0 && q->compressed && q->w.out->size % 512)
        rc = ins_truncate(q->w.out, (q->w.out->size + 511) / 512 * 512);
    /* Everything the header points to is on disk before the header. */
    if (rc == 0)
        rc = ins_flush(q->w.out);
    if (rc == 0 && !q->opened) {
        rc = write_header(q);
    } else if (rc == 0) {
        /* An existing image keeps its header but for a grown refcount
         * table. */
        uint8_t f[12];
        uint32_t c = (uint32_t)(q->reftable_size * 8 / q->cs);

        put_be64(f, q->reftable_offset);
        f[8] = (uint8_t)(c >> 24);
        f[9] = (uint8_t)(c >> 16);
        f[10] = (uint8_t)(c >> 8);
        f[11] = (uint8_t)c;
        rc = ins_write(q->w.out, f, sizeof(f), 48);
    }
    if (rc == 0)
        rc = ins_flush(q->w.out);
    return rc;
}

static void q2w_close(struct ins_wimage *img)
{
    q2w_free((struct q2w *)img);
}

const struct ins_writer ins_wr_qcow2 = {
    .name = "qcow2",
    .create = q2w_create,
    .open = q2w_open,
    .write = q2w_write,
    .write_zeroes = q2w_write_zeroes,
    .compress = q2w_compress,
    .write_compressed = q2w_write_compressed,
    .finish = q2w_finish,
    .close = q2w_close,
    .can_defer = 1,
};

/*
 * qcow2_read.c - reading qcow2 guest content: block status and reads.
 *
 * The lookup follows qemu's qcow2_get_host_offset(): one L2 table at a
 * time (qemu's default L2 slice is the whole table), runs of subclusters
 * of one type whose host offsets are contiguous, compressed clusters one
 * at a time.  Block status follows qcow2_co_block_status(), including the
 * metadata-preallocation check that makes qemu ask the file whether
 * allocated clusters are really written.
 *
 * Memory: the L1 table (bounded by qemu's 32 MiB limit), one L2 table,
 * one refcount block, one compressed cluster and its decompressed form.
 * Nothing grows with the virtual size beyond the L1 table.
 */
#include "qcow2_read.h"

#include <string.h>
#include <zlib.h>
#include <zstd.h>

#define L1E_OFFSET_MASK     0x00fffffffffffe00ull
#define L2E_OFFSET_MASK     0x00fffffffffffe00ull
#define REFT_OFFSET_MASK    0xfffffffffffffe00ull
#define OFLAG_COPIED        (1ull << 63)
#define OFLAG_COMPRESSED    (1ull << 62)
#define OFLAG_ZERO          (1ull << 0)
#define ALL_ALLOC           0xffffffffull

enum sc_type {
    SC_NORMAL,
    SC_COMPRESSED,
    SC_ZERO_PLAIN,
    SC_ZERO_ALLOC,
    SC_UNALLOCATED_PLAIN,
    SC_UNALLOCATED_ALLOC,
    SC_INVALID,
};

struct qcow2_reader {
    uint64_t *l1;               /* l1_size entries */
    uint8_t *l2;                /* one L2 table */
    uint64_t l2_offset;         /* its offset, 0 = none cached */
    size_t l2_entry_size;       /* 8, or 16 with extended L2 */
    uint32_t l2_entries;        /* entries per table */
    uint32_t sc_bits;           /* subcluster bits */
    uint32_t sc_per_cluster;    /* 1 or 32 */
    uint8_t *refblock;          /* one refcount block */
    uint64_t refblock_offset;
    uint64_t rt_index;          /* refcount table entry last read ... */
    uint64_t rt_entry;          /* ... and its value (rt_valid) */
    int rt_valid;
    uint8_t *cin;               /* compressed input */
    size_t cin_len;
    uint8_t *cluster;           /* last decompressed cluster */
    uint64_t cluster_l2e;       /* its L2 entry, 0 = none */
    int prealloc_checked;
    int metadata_prealloc;
    struct ins_bdev *data;      /* where guest clusters live */
};

static int corrupt(struct qcow2_image *st, const char *what)
{
    return ins_error(st->base.ctx, INS_EIO, "qcow2: Image is corrupt: %s", what);
}

static int has_data_file(const struct qcow2_image *st)
{
    return (st->incompatible_features & QCOW2_INCOMPAT_DATA_FILE) != 0;
}

/*
 * Sets up st->reader, reading the current L1 table (the active one, or a
 * loaded snapshot's); on failure to read it the message is l1_error.
 */
static int make_reader(struct qcow2_image *st, const char *l1_error)
{
    struct ins_ctx *ctx = st->base.ctx;
    struct qcow2_reader *r;
    size_t l1_bytes;
    uint32_t i;
    int rc;

    if (st->crypt_method != QCOW2_CRYPT_NONE)
        return ins_error(ctx, INS_ENOTSUP, "reading encrypted qcow2 images "
                         "is not supported (no decryption)");
    r = ins_calloc(ctx, 1, sizeof(*r));
    if (!r)
        return ins_error(ctx, INS_ENOMEM, "Out of memory");
    st->reader = r;
    r->l2_entry_size = st->extended_l2 ? 16 : 8;
    r->l2_entries = (uint32_t)(st->cluster_size / r->l2_entry_size);
    r->sc_per_cluster = st->extended_l2 ? 32 : 1;
    r->sc_bits = st->cluster_bits - (st->extended_l2 ? 5 : 0);
    r->data = st->data_bdev ? st->data_bdev : st->base.file;
    /* l1_size is at most QCOW2_MAX_L1_SIZE / 8 (checked at open, and when
     * a snapshot is loaded). */
    l1_bytes = (size_t)st->l1_size * 8;
    r->l1 = ins_malloc(ctx, l1_bytes ? l1_bytes : 1);
    r->l2 = ins_malloc(ctx, st->cluster_size);
    r->refblock = ins_malloc(ctx, st->cluster_size);
    r->cluster = ins_malloc(ctx, st->cluster_size);
    if (!r->l1 || !r->l2 || !r->refblock || !r->cluster) {
        qcow2_reader_free(st);
        return ins_error(ctx, INS_ENOMEM, "Out of memory");
    }
    if (l1_bytes) {
        uint8_t *raw = (uint8_t *)r->l1;

        rc = ins_read_zfill(st->base.file, raw, l1_bytes, st->l1_table_offset);
        if (rc < 0) {
            qcow2_reader_free(st);
            return ins_error(ctx, rc, "%s", l1_error);
        }
        for (i = 0; i < st->l1_size; i++)
            r->l1[i] = ins_be64(raw + 8 * (size_t)i);
    }
    return INS_OK;
}

static int reader(struct qcow2_image *st, struct qcow2_reader **r)
{
    int rc = st->reader ? INS_OK : make_reader(st, "Could not read L1 table");

    *r = st->reader;
    return rc;
}

void qcow2_reader_free(struct qcow2_image *st)
{
    struct qcow2_reader *r = st->reader;
    struct ins_ctx *ctx = st->base.ctx;

    if (!r)
        return;
    ins_free(ctx, r->l1);
    ins_free(ctx, r->l2);
    ins_free(ctx, r->refblock);
    ins_free(ctx, r->cin);
    ins_free(ctx, r->cluster);
    ins_free(ctx, r);
    st->reader = NULL;
}

static int load_l2(struct qcow2_image *st, struct qcow2_reader *r,
                   uint64_t l2_offset)
{
    int rc;

    if (r->l2_offset == l2_offset)
        return INS_OK;
    r->l2_offset = 0;
    rc = ins_read_zfill(st->base.file, r->l2, st->cluster_size, l2_offset);
    if (rc < 0)
        return ins_error(st->base.ctx, rc, "Could not read L2 table");
    r->l2_offset = l2_offset;
    return INS_OK;
}

static uint64_t l2_entry(const struct qcow2_reader *r, uint32_t i)
{
    return ins_be64(r->l2 + (size_t)i * r->l2_entry_size);
}

static uint64_t l2_bitmap(const struct qcow2_reader *r, uint32_t i)
{
    return r->l2_entry_size == 16 ? ins_be64(r->l2 + (size_t)i * 16 + 8) : 0;
}

static enum sc_type subcluster_type(const struct qcow2_image *st,
                                    uint64_t e, uint64_t bitmap, unsigned sc)
{
    int compressed = (e & OFLAG_COMPRESSED) != 0;
    int normal = !compressed && ((e & L2E_OFFSET_MASK) ||
                                 (has_data_file(st) && (e & OFLAG_COPIED)));

    if (st->extended_l2) {
        if (compressed)
            return SC_COMPRESSED;
        if (normal) {
            if ((bitmap >> 32) & bitmap)
                return SC_INVALID;
            if (bitmap & (1ull << (sc + 32)))
                return SC_ZERO_ALLOC;
            if (bitmap & (1ull << sc))
                return SC_NORMAL;
            return SC_UNALLOCATED_ALLOC;
        }
        if (bitmap & ALL_ALLOC)
            return SC_INVALID;
        if (bitmap & (1ull << (sc + 32)))
            return SC_ZERO_PLAIN;
        return SC_UNALLOCATED_PLAIN;
    }
    if (compressed)
        return SC_COMPRESSED;
    if (e & OFLAG_ZERO)
        return (e & L2E_OFFSET_MASK) ? SC_ZERO_ALLOC : SC_ZERO_PLAIN;
    return normal ? SC_NORMAL : SC_UNALLOCATED_PLAIN;
}

static unsigned count_ones_from_bottom(uint32_t v)
{
    return v == 0xffffffffu ? 32 : (unsigned)__builtin_ctz(~v);
}

static unsigned count_zeros_from_bottom(uint32_t v)
{
    return v == 0 ? 32 : (unsigned)__builtin_ctz(v);
}

static uint32_t range_bits(unsigned from, unsigned to)
{
    uint64_t r = (1ull << to) - (1ull << from);

    return (uint32_t)r;
}

/* qemu's qcow2_get_subcluster_range_type(): subclusters of one type from
 * sc_from; -1 for an invalid entry. */
static int range_type(const struct qcow2_image *st, const struct qcow2_reader *r,
                      uint64_t e, uint64_t bitmap, unsigned sc_from,
                      enum sc_type *type)
{
    *type = subcluster_type(st, e, bitmap, sc_from);
    if (*type == SC_INVALID)
        return -1;
    if (!st->extended_l2 || *type == SC_COMPRESSED)
        return (int)(r->sc_per_cluster - sc_from);
    switch (*type) {
    case SC_NORMAL:
        return (int)(count_ones_from_bottom((uint32_t)bitmap | range_bits(0, sc_from)) - sc_from);
    case SC_ZERO_PLAIN:
    case SC_ZERO_ALLOC:
        return (int)(count_ones_from_bottom((uint32_t)(bitmap >> 32) | range_bits(0, sc_from)) - sc_from);
    default:
        return (int)(count_zeros_from_bottom(((uint32_t)(bitmap >> 32) | (uint32_t)bitmap) &
                                             ~range_bits(0, sc_from)) - sc_from);
    }
}

/* qemu's count_contiguous_subclusters(). */
static int count_contiguous(const struct qcow2_image *st, const struct qcow2_reader *r,
                            uint64_t nb_clusters, unsigned sc_index,
                            uint32_t l2_index)
{
    enum sc_type expected = SC_NORMAL, type;
    uint64_t expected_offset = 0, i;
    int count = 0, check_offset = 0;

    for (i = 0; i < nb_clusters; i++) {
        unsigned first_sc = i == 0 ? sc_index : 0;
        uint64_t e = l2_entry(r, l2_index + (uint32_t)i);
        int n = range_type(st, r, e, l2_bitmap(r, l2_index + (uint32_t)i),
                           first_sc, &type);

        if (n < 0)
            return -1;
        if (i == 0) {
            if (type == SC_COMPRESSED)
                return n;
            expected = type;
            expected_offset = e & L2E_OFFSET_MASK;
            check_offset = type == SC_NORMAL || type == SC_ZERO_ALLOC ||
                           type == SC_UNALLOCATED_ALLOC;
        } else if (type != expected) {
            break;
        } else if (check_offset) {
            expected_offset += st->cluster_size;
            if (expected_offset != (e & L2E_OFFSET_MASK))
                break;
        }
        count += n;
        if (first_sc + (unsigned)n < r->sc_per_cluster)
            break;
    }
    return count;
}

/* qemu's qcow2_get_host_offset(): *bytes in, the run's length out. */
static int get_host_offset(struct qcow2_image *st, struct qcow2_reader *r,
                           uint64_t offset, uint64_t *bytes,
                           uint64_t *host, enum sc_type *type,
                           uint64_t *entry)
{
    uint64_t cs = st->cluster_size;
    uint64_t in_cluster = offset & (cs - 1);
    uint64_t needed = *bytes + in_cluster;
    uint32_t l2_index = (uint32_t)((offset >> st->cluster_bits) & (r->l2_entries - 1));
    uint64_t available = (uint64_t)(r->l2_entries - l2_index) << st->cluster_bits;
    uint64_t l1_index = offset >> (st->cluster_bits + st->l2_bits);
    uint64_t l2_offset, e, bitmap;
    unsigned sc_index;
    int sc, rc;

    if (needed > available)
        needed = available;
    *host = 0;
    *entry = 0;
    *type = SC_UNALLOCATED_PLAIN;
    /* A snapshot's L1 table may be shorter than the virtual size. */
    if (l1_index >= st->l1_size)
        goto out;
    l2_offset = r->l1[l1_index] & L1E_OFFSET_MASK;
    if (!l2_offset)
        goto out;
    if (l2_offset & (cs - 1))
        return corrupt(st, "L2 table offset unaligned");
    rc = load_l2(st, r, l2_offset);
    if (rc < 0)
        return rc;
    sc_index = (unsigned)(in_cluster >> r->sc_bits);
    e = l2_entry(r, l2_index);
    bitmap = l2_bitmap(r, l2_index);
    *entry = e;
    *type = subcluster_type(st, e, bitmap, sc_index);
    if (st->version < 3 && (*type == SC_ZERO_PLAIN || *type == SC_ZERO_ALLOC))
        return corrupt(st, "Zero cluster entry found in pre-v3 image");
    switch (*type) {
    case SC_COMPRESSED:
        if (has_data_file(st))
            return corrupt(st, "Compressed cluster entry found in image with "
                           "external data file");
        *host = e;
        break;
    case SC_ZERO_ALLOC:
    case SC_NORMAL:
    case SC_UNALLOCATED_ALLOC: {
        uint64_t cluster = e & L2E_OFFSET_MASK;

        *host = cluster + in_cluster;
        if (cluster & (cs - 1))
            return corrupt(st, "Cluster allocation offset unaligned");
        if (has_data_file(st) && *host != offset)
            return corrupt(st, "External data file host cluster offset does "
                           "not match guest cluster offset");
        break;
    }
    default:
        break;
    }
    sc = count_contiguous(st, r, (needed + cs - 1) >> st->cluster_bits, sc_index,
                          l2_index);
    if (sc < 0)
        return corrupt(st, "Invalid cluster entry found");
    available = ((uint64_t)sc + sc_index) << r->sc_bits;
out:
    if (available > needed)
        available = needed;
    *bytes = available - in_cluster;
    return INS_OK;
}

/* ---- refcounts, for qemu's metadata-preallocation check ---- */

static int get_refcount(struct qcow2_image *st, struct qcow2_reader *r,
                        uint64_t cluster, uint64_t *refcount)
{
    /* Entries per refcount block: cluster_size * 8 / width. */
    uint32_t block_bits = st->cluster_bits + 3 - st->refcount_order;
    uint64_t table_size = (uint64_t)st->refcount_table_clusters << (st->cluster_bits - 3);
    uint64_t index, block, bit;
    uint8_t entry[8];
    unsigned width = 1u << st->refcount_order;
    int rc;

    index = cluster >> block_bits;
    *refcount = 0;
    if (index >= table_size)
        return INS_OK;
    if (!r->rt_valid || r->rt_index != index) {
        rc = ins_read_zfill(st->base.file, entry, 8,
                            st->refcount_table_offset + index * 8);
        if (rc < 0)
            return rc;
        r->rt_index = index;
        r->rt_entry = ins_be64(entry);
        r->rt_valid = 1;
    }
    block = r->rt_entry & REFT_OFFSET_MASK;
    if (!block)
        return INS_OK;
    if (block & (st->cluster_size - 1))
        return corrupt(st, "Refblock offset unaligned");
    if (r->refblock_offset != block) {
        r->refblock_offset = 0;
        rc = ins_read_zfill(st->base.file, r->refblock, st->cluster_size, block);
        if (rc < 0)
            return rc;
        r->refblock_offset = block;
    }
    bit = (cluster & ((1ull << block_bits) - 1)) * width;
    if (width < 8) {
        *refcount = (r->refblock[bit / 8] >> (bit % 8)) & ((1u << width) - 1);
    } else {
        uint64_t v = 0;
        unsigned i;

        for (i = 0; i < width / 8; i++)
            v = v << 8 | r->refblock[bit / 8 + i];
        *refcount = v;
    }
    return INS_OK;
}

/* qemu's qcow2_detect_metadata_preallocation(). */
static int detect_metadata_prealloc(struct qcow2_image *st, struct qcow2_reader *r)
{
    uint64_t file_length = ins_file_length(st->base.file);
    uint64_t real_clusters = st->base.file->allocated / st->cluster_size;
    uint64_t threshold = real_clusters * 10 / 9 > real_clusters + 2
                             ? real_clusters * 10 / 9 : real_clusters + 2;
    uint64_t end = (file_length + st->cluster_size - 1) >> st->cluster_bits;
    uint64_t i, count = 0;

    for (i = 0; i < end && count < threshold; i++) {
        uint64_t refcount;
        int rc = get_refcount(st, r, i, &refcount);

        if (rc < 0)
            return rc;
        count += refcount != 0;
    }
    return count >= threshold;
}

int qcow2_block_status(struct ins_image *img, uint64_t offset, uint64_t bytes,
                       struct ins_bstat *bs)
{
    struct qcow2_image *st = (struct qcow2_image *)img;
    struct qcow2_reader *r;
    uint64_t host, entry, n = bytes > 0x7fffffff ? 0x7fffffff : bytes;
    enum sc_type type;
    int status = 0, rc = reader(st, &r);

    if (rc < 0)
        return rc;
    if (!r->prealloc_checked) {
        rc = detect_metadata_prealloc(st, r);
        if (rc < 0)
            return rc;
        r->metadata_prealloc = rc == 1;
        r->prealloc_checked = 1;
    }
    rc = get_host_offset(st, r, offset, &n, &host, &type, &entry);
    if (rc < 0)
        return rc;
    bs->pnum = n;
    if (type == SC_NORMAL || type == SC_ZERO_ALLOC || type == SC_UNALLOCATED_ALLOC) {
        bs->map = host;
        bs->file = r->data;
        status |= INS_BS_OFFSET_VALID;
    }
    if (type == SC_ZERO_PLAIN || type == SC_ZERO_ALLOC)
        status |= INS_BS_ZERO;
    else if (type != SC_UNALLOCATED_PLAIN && type != SC_UNALLOCATED_ALLOC)
        status |= INS_BS_DATA;
    if (r->metadata_prealloc && (status & INS_BS_DATA) &&
        (status & INS_BS_OFFSET_VALID))
        status |= INS_BS_RECURSE;
    if (type == SC_COMPRESSED)
        status |= INS_BS_COMPRESSED;
    return status;
}

/* Decompresses the cluster an L2 entry points to into r->cluster. */
static int load_compressed(struct qcow2_image *st, struct qcow2_reader *r,
                           uint64_t e)
{
    struct ins_ctx *ctx = st->base.ctx;
    uint32_t csize_shift = 62 - (st->cluster_bits - 8);
    uint64_t csize_mask = (1ull << (st->cluster_bits - 8)) - 1;
    uint64_t coffset = e & ((1ull << csize_shift) - 1);
    uint64_t nb_csectors = ((e >> csize_shift) & csize_mask) + 1;
    uint64_t csize = nb_csectors * 512 - (coffset & 511);
    int rc, ok = 0;

    if (r->cluster_l2e == e)
        return INS_OK;
    r->cluster_l2e = 0;
    if (csize > r->cin_len) {
        uint8_t *grown = ins_realloc(ctx, r->cin, (size_t)csize);

        if (!grown)
            return ins_error(ctx, INS_ENOMEM, "Out of memory");
        r->cin = grown;
        r->cin_len = (size_t)csize;
    }
    rc = ins_read_zfill(st->base.file, r->cin, (size_t)csize, coffset);
    if (rc < 0)
        return rc;
    if (st->compression_type == QCOW2_COMPRESSION_ZSTD) {
        ZSTD_DCtx *d = ZSTD_createDCtx();
        ZSTD_outBuffer out = { r->cluster, st->cluster_size, 0 };
        ZSTD_inBuffer in = { r->cin, (size_t)csize, 0 };
        size_t zr = 0;

        if (!d)
            return ins_error(ctx, INS_ENOMEM, "Out of memory");
        ok = 1;
        while (out.pos < out.size) {
            size_t in_before = in.pos, out_before = out.pos;

            zr = ZSTD_decompressStream(d, &out, &in);
            if (ZSTD_isError(zr) || (in.pos <= in_before && out.pos <= out_before)) {
                ok = 0;
                break;
            }
        }
        if (zr > 0)
            ok = 0;
        ZSTD_freeDCtx(d);
    } else {
        z_stream z;

        memset(&z, 0, sizeof(z));
        z.next_in = r->cin;
        z.avail_in = (uInt)csize;
        z.next_out = r->cluster;
        z.avail_out = (uInt)st->cluster_size;
        if (inflateInit2(&z, -12) != Z_OK)
            return ins_error(ctx, INS_ENOMEM, "Out of memory");
        rc = inflate(&z, Z_FINISH);
        ok = (rc == Z_STREAM_END || rc == Z_BUF_ERROR) && z.avail_out == 0;
        inflateEnd(&z);
    }
    if (!ok)
        return ins_error(ctx, INS_EIO, "Could not decompress cluster");
    r->cluster_l2e = e;
    return INS_OK;
}

int qcow2_read(struct ins_image *img, void *buf, size_t len, uint64_t offset)
{
    struct qcow2_image *st = (struct qcow2_image *)img;
    struct qcow2_reader *r;
    uint8_t *p = buf;
    int rc = reader(st, &r);

    if (rc < 0)
        return rc;
    while (len > 0) {
        uint64_t n = len, host, entry;
        enum sc_type type;

        rc = get_host_offset(st, r, offset, &n, &host, &type, &entry);
        if (rc < 0)
            return rc;
        if (n == 0 || n > len)
            n = len;
        switch (type) {
        case SC_NORMAL:
            rc = ins_read_zfill(r->data, p, (size_t)n, host);
            break;
        case SC_COMPRESSED:
            rc = load_compressed(st, r, entry);
            if (rc == INS_OK)
                memcpy(p, r->cluster + (offset & (st->cluster_size - 1)), (size_t)n);
            break;
        default:
            /* The read layer only asks for data ranges; zeros otherwise. */
            memset(p, 0, (size_t)n);
            break;
        }
        if (rc < 0)
            return rc;
        p += n;
        offset += n;
        len -= (size_t)n;
    }
    return INS_OK;
}

/* ---- internal snapshots ---- */

/* Whether the string stored at off (size bytes, ending at its first NUL
 * as qemu reads it) is s.  1 yes, 0 no, or a negative INS_E*. */
static int stored_string_is(struct qcow2_image *st, uint64_t off,
                            uint16_t size, const char *s)
{
    size_t n = strlen(s), done = 0;
    uint8_t buf[256];
    int rc;

    if (n > size)
        return 0;
    while (done < n) {
        size_t chunk = n - done < sizeof(buf) ? n - done : sizeof(buf);

        rc = ins_read_zfill(st->base.file, buf, chunk, off + done);
        if (rc < 0)
            return rc;
        if (memcmp(buf, s + done, chunk) != 0)
            return 0;
        done += chunk;
    }
    if (n == size)
        return 1;
    rc = ins_read_zfill(st->base.file, buf, 1, off + n);
    if (rc < 0)
        return rc;
    return buf[0] == 0;
}

/* qemu's find_snapshot_by_id_and_name(): the first snapshot matching. */
static int find_snapshot(struct qcow2_image *st, const char *id,
                         const char *name, size_t *index)
{
    size_t i;
    int rc;

    for (i = 0; i < st->n_snap_locs; i++) {
        const struct qcow2_snapshot_loc *loc = &st->snap_locs[i];

        if (id) {
            rc = stored_string_is(st, loc->id_offset, loc->id_size, id);
            if (rc <= 0) {
                if (rc < 0)
                    return rc;
                continue;
            }
        }
        if (name) {
            rc = stored_string_is(st, loc->name_offset, loc->name_size, name);
            if (rc <= 0) {
                if (rc < 0)
                    return rc;
                continue;
            }
        }
        *index = i;
        return 1;
    }
    return 0;
}

/*
 * qemu's qcow2_snapshot_load_tmp(): the snapshot's L1 table replaces the
 * active one, checked as qcow2_validate_table() checks it.  The virtual
 * size stays the image's current one, as in qemu (whatever disk size the
 * snapshot recorded).
 */
int qcow2_load_snapshot(struct ins_image *img, const char *id,
                        const char *name)
{
    struct qcow2_image *st = (struct qcow2_image *)img;
    struct ins_ctx *ctx = img->ctx;
    const struct qcow2_snapshot_loc *loc;
    uint64_t old_offset = st->l1_table_offset;
    uint32_t old_size = st->l1_size;
    size_t index;
    int rc;

    if (!id && !name)
        return ins_error(ctx, INS_ENOENT, "Can't find snapshot");
    rc = find_snapshot(st, id, name, &index);
    if (rc < 0)
        return ins_error(ctx, rc, "Failed to read snapshot table");
    if (rc == 0)
        return ins_error(ctx, INS_ENOENT, "Can't find snapshot");
    loc = &st->snap_locs[index];
    if (loc->l1_size > QCOW2_MAX_L1_SIZE / 8)
        return ins_error(ctx, INS_EFBIG, "Snapshot L1 table too large");
    if ((uint64_t)INT64_MAX - (uint64_t)loc->l1_size * 8 < loc->l1_table_offset ||
        (loc->l1_table_offset & (st->cluster_size - 1)) != 0)
        return ins_error(ctx, INS_EINVAL, "Snapshot L1 table offset invalid");

    /* Switch, and read the new table now as qemu does (it keeps the old
     * one if the read fails). */
    qcow2_reader_free(st);
    st->l1_table_offset = loc->l1_table_offset;
    st->l1_size = loc->l1_size;
    if (st->crypt_method != QCOW2_CRYPT_NONE)
        return INS_OK;          /* reads fail later: no decryption */
    rc = make_reader(st, "Failed to read l1 table for snapshot");
    if (rc < 0) {
        st->l1_table_offset = old_offset;
        st->l1_size = old_size;
    }
    return rc;
}

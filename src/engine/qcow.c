/*
 * qcow.c - the original qcow format (version 1).
 *
 * A 48-byte big-endian header, an L1 table of L2 table offsets and L2
 * tables of cluster offsets (bit 63 marks a compressed cluster).  The
 * header may name a backing file (no format is stored); info reports it
 * and does not open it.  AES encryption is reported, never decrypted:
 * qemu-img info opens without the key, and reading is refused as qemu-img
 * refuses it without one.  Compressed clusters are raw deflate streams
 * inflated into one cached cluster, exactly as qemu accepts them.
 */
#include "engine.h"

#include <string.h>
#include <zlib.h>

#define QCOW_MAGIC          0x514649fbu     /* "QFI\xfb" */
#define QCOW_VERSION        1
#define QCOW_HEADER_SIZE    48
#define QCOW_CRYPT_AES      1
#define QCOW_OFLAG_COMPRESSED (1ull << 63)
/* bs->backing_file is 1024 bytes in qemu. */
#define QCOW_BACKING_MAX    1023u

/*
 * The block layer's request limits: a read longer than
 * BDRV_REQUEST_MAX_BYTES, or ending past BDRV_MAX_LENGTH, fails with EIO
 * before touching the file.  Shorter reads past end of file give zeros.
 */
#define BDRV_REQUEST_MAX_BYTES  (((uint64_t)INT32_MAX >> 9) << 9)
#define BDRV_MAX_LENGTH         ((uint64_t)INT64_MAX - ((1ull << 30) - 1))

/* The L1 table is loaded for reading only up to this size. */
#define QCOW_MAX_L1_BYTES   (64u << 20)

struct qcow_image {
    struct ins_image base;
    uint32_t cluster_bits;
    uint32_t l2_bits;
    uint32_t crypt_method;
    uint64_t l1_offset;
    uint64_t l1_size;           /* entries */
    char *backing_file;         /* NULL without one */
    uint64_t *l1;               /* loaded on first read */
    uint64_t *l2;               /* the last L2 table read, at l2_offset */
    uint64_t l2_offset;
    /* The last compressed cluster inflated (qemu's cluster_cache). */
    uint8_t *cache;
    uint8_t *cdata;             /* its compressed bytes */
    uint64_t cache_offset;      /* UINT64_MAX: none */
};

/* qcow_probe(): a whole header with the magic and version 1. */
static int qcow_probe(struct ins_ctx *ctx, struct ins_bdev *file,
                      const uint8_t *head, size_t head_len)
{
    uint8_t h[QCOW_HEADER_SIZE];

    (void)ctx; (void)file;
    /* qemu probes 2048 bytes padded with zeros past end of file (an
     * empty file is raw before any probe). */
    if (head_len == 0)
        return 0;
    memset(h, 0, sizeof(h));
    memcpy(h, head, head_len < sizeof(h) ? head_len : sizeof(h));
    return ins_be32(h) == QCOW_MAGIC && ins_be32(h + 4) == QCOW_VERSION ? 100 : 0;
}

static int bdrv_request_ok(uint64_t offset, uint64_t bytes)
{
    return bytes <= BDRV_REQUEST_MAX_BYTES && offset <= BDRV_MAX_LENGTH - bytes;
}

/* A failed read in qcow_open() has no message of its own: qemu reports
 * the errno against the file name. */
static int io_error(struct ins_ctx *ctx, struct ins_bdev *file)
{
    return ins_error(ctx, INS_EIO, "Could not open '%s': Input/output error",
                     file->name ? file->name : "");
}

/* What qemu-img map, compare and convert say about an encrypted image. */
static int no_key(struct ins_ctx *ctx)
{
    return ins_error(ctx, INS_ENOTSUP,
                     "Parameter 'encrypt.key-secret' is required for cipher");
}

static void qcow_close(struct ins_image *img)
{
    struct qcow_image *qi = (struct qcow_image *)img;

    if (!qi)
        return;
    ins_free(img->ctx, qi->backing_file);
    ins_free(img->ctx, qi->l1);
    ins_free(img->ctx, qi->l2);
    ins_free(img->ctx, qi->cache);
    ins_free(img->ctx, qi->cdata);
    ins_free(img->ctx, qi);
}

/* qcow_open()'s header checks, in qemu's order. */
static int qcow_check(struct ins_ctx *ctx, const uint8_t *h)
{
    uint32_t version = ins_be32(h + 4);
    uint64_t size = ins_be64(h + 24);
    uint32_t cluster_bits = h[32], l2_bits = h[33];
    uint32_t crypt = ins_be32(h + 36);
    uint32_t shift;

    if (ins_be32(h) != QCOW_MAGIC)
        return ins_error(ctx, INS_EINVAL, "Image not in qcow format");
    if (version != QCOW_VERSION)
        /* qemu adds the hint "Try the 'qcow2' driver instead." for 2 and 3. */
        return ins_error(ctx, INS_ENOTSUP,
                         "qcow (v%d) does not support qcow version %u",
                         QCOW_VERSION, version);
    if (size <= 1)
        return ins_error(ctx, INS_EINVAL,
                         "Image size is too small (must be at least 2 bytes)");
    if (cluster_bits < 9 || cluster_bits > 16)
        return ins_error(ctx, INS_EINVAL,
                         "Cluster size must be between 512 and 64k");
    if (l2_bits < 9 - 3 || l2_bits > 16 - 3)
        return ins_error(ctx, INS_EINVAL,
                         "L2 table size must be between 512 and 64k");
    if (crypt != 0 && crypt != QCOW_CRYPT_AES)
        return ins_error(ctx, INS_EINVAL,
                         "invalid encryption method in qcow header");
    shift = cluster_bits + l2_bits;
    if (size > UINT64_MAX - (1ull << shift) ||
        ((size + (1ull << shift) - 1) >> shift) > INT32_MAX / 8)
        return ins_error(ctx, INS_EINVAL, "Image too large");
    return INS_OK;
}

static int qcow_open(struct ins_ctx *ctx, struct ins_bdev *file,
                     unsigned flags, struct ins_image **out)
{
    uint8_t h[QCOW_HEADER_SIZE];
    struct qcow_image *qi;
    uint64_t backing_offset, size;
    uint32_t backing_len;
    int rc;

    if (ins_read_zfill(file, h, sizeof(h), 0) < 0)
        return io_error(ctx, file);
    rc = qcow_check(ctx, h);
    if (rc < 0)
        return rc;
    /* qemu-img opens for I/O only with the key, which instar never takes. */
    if ((flags & INS_O_READ) && ins_be32(h + 36) != 0)
        return no_key(ctx);
    qi = ins_calloc(ctx, 1, sizeof(*qi));
    if (!qi)
        return ins_error(ctx, INS_ENOMEM, "Out of memory");
    qi->base.drv = &ins_drv_qcow;
    qi->base.ctx = ctx;
    qi->base.file = file;
    size = ins_be64(h + 24);
    qi->cluster_bits = h[32];
    qi->l2_bits = h[33];
    qi->cache_offset = UINT64_MAX;
    qi->crypt_method = ins_be32(h + 36);
    qi->l1_offset = ins_be64(h + 40);
    qi->l1_size = (size + (1ull << (qi->cluster_bits + qi->l2_bits)) - 1) >>
                  (qi->cluster_bits + qi->l2_bits);
    /* qemu keeps whole sectors: an odd size is truncated. */
    qi->base.virtual_size = size / 512 * 512;

    /* qemu reads the whole L1 table here; we only check that the read
     * would succeed (past end of file it gives zeros). */
    if (!bdrv_request_ok(qi->l1_offset, qi->l1_size * 8)) {
        qcow_close(&qi->base);
        return io_error(ctx, file);
    }

    backing_offset = ins_be64(h + 8);
    backing_len = ins_be32(h + 16);
    if (backing_offset != 0) {
        if (backing_len > QCOW_BACKING_MAX) {
            qcow_close(&qi->base);
            return ins_error(ctx, INS_EINVAL, "Backing file name too long");
        }
        qi->backing_file = ins_malloc(ctx, (size_t)backing_len + 1);
        if (!qi->backing_file) {
            qcow_close(&qi->base);
            return ins_error(ctx, INS_ENOMEM, "Out of memory");
        }
        if (!bdrv_request_ok(backing_offset, backing_len) ||
            ins_read_zfill(file, qi->backing_file, backing_len, backing_offset) < 0) {
            qcow_close(&qi->base);
            return io_error(ctx, file);
        }
        qi->backing_file[backing_len] = '\0';
    }
    *out = &qi->base;
    return INS_OK;
}

static int qcow_info(struct ins_image *img, struct tree_builder *tb,
                     struct ins_info *info)
{
    struct qcow_image *qi = (struct qcow_image *)img;

    (void)tb;
    info->virtual_size = img->virtual_size;
    info->has_cluster_size = 1;
    info->cluster_size = (int64_t)1 << qi->cluster_bits;
    info->encrypted = qi->crypt_method != 0;
    info->has_dirty_flag = 1;
    if (qi->backing_file) {
        info->backing_filename = ins_strdup(img->ctx, qi->backing_file);
        if (!info->backing_filename)
            return ins_error(img->ctx, INS_ENOMEM, "Out of memory");
    }
    return INS_OK;
}

/* ---- reading ---- */

static void *z_alloc(void *opaque, unsigned items, unsigned size)
{
    return ins_calloc(opaque, items, size);
}

static void z_free(void *opaque, void *p)
{
    ins_free(opaque, p);
}

static int read_be64_table(struct qcow_image *qi, uint64_t offset,
                           uint64_t *table, size_t n)
{
    uint8_t *raw = (uint8_t *)table;
    size_t i;

    if (ins_read_zfill(qi->base.file, raw, n * 8, offset) < 0)
        return ins_error(qi->base.ctx, INS_EIO, "Failed to read qcow table");
    for (i = 0; i < n; i++)
        table[i] = ins_be64(raw + 8 * i);
    return INS_OK;
}

static int qcow_load_l1(struct qcow_image *qi)
{
    struct ins_ctx *ctx = qi->base.ctx;
    uint64_t bytes = qi->l1_size * 8;

    if (qi->l1)
        return INS_OK;
    if (bytes > QCOW_MAX_L1_BYTES)
        return ins_error(ctx, INS_EFBIG, "qcow L1 table of %llu bytes is too large",
                         (unsigned long long)bytes);
    qi->l1 = ins_malloc(ctx, bytes ? (size_t)bytes : 1);
    if (!qi->l1)
        return ins_error(ctx, INS_ENOMEM, "Out of memory");
    if (read_be64_table(qi, qi->l1_offset, qi->l1, (size_t)qi->l1_size) < 0) {
        ins_free(ctx, qi->l1);
        qi->l1 = NULL;
        return INS_EIO;
    }
    return INS_OK;
}

/* get_cluster_offset() without allocation: the L2 entry of the cluster
 * holding guest offset `offset`, 0 when unallocated. */
static int qcow_entry(struct qcow_image *qi, uint64_t offset, uint64_t *entry)
{
    struct ins_ctx *ctx = qi->base.ctx;
    uint64_t l1_index = offset >> (qi->cluster_bits + qi->l2_bits);
    uint64_t l2_index = (offset >> qi->cluster_bits) & ((1ull << qi->l2_bits) - 1);
    uint64_t l2_offset;
    int rc;

    *entry = 0;
    rc = qcow_load_l1(qi);
    if (rc < 0)
        return rc;
    if (l1_index >= qi->l1_size || (l2_offset = qi->l1[l1_index]) == 0)
        return INS_OK;
    if (!qi->l2) {
        qi->l2 = ins_malloc(ctx, (size_t)8 << qi->l2_bits);
        if (!qi->l2)
            return ins_error(ctx, INS_ENOMEM, "Out of memory");
    }
    if (qi->l2_offset != l2_offset) {
        qi->l2_offset = 0;
        if (!bdrv_request_ok(l2_offset, (uint64_t)8 << qi->l2_bits))
            return ins_error(ctx, INS_EIO, "qcow L2 table offset is invalid");
        rc = read_be64_table(qi, l2_offset, qi->l2, (size_t)1 << qi->l2_bits);
        if (rc < 0)
            return rc;
        qi->l2_offset = l2_offset;
    }
    *entry = qi->l2[l2_index];
    return INS_OK;
}

/*
 * qcow_co_block_status() for one cluster: unallocated clusters belong to
 * the backing file; compressed clusters are data without an offset.
 * qemu maps a plain cluster at entry | offset-in-cluster (an OR: a
 * misaligned entry shows as qemu shows it).  Encrypted images never get
 * here in qemu-img (no key); we refuse them the same way.
 */
static int qcow_block_status(struct ins_image *img, uint64_t offset,
                             uint64_t bytes, struct ins_bstat *st)
{
    struct qcow_image *qi = (struct qcow_image *)img;
    uint64_t cs = 1ull << qi->cluster_bits;
    uint64_t in_cluster = offset & (cs - 1);
    uint64_t entry;
    int rc;

    if (qi->crypt_method)
        return no_key(img->ctx);
    rc = qcow_entry(qi, offset, &entry);
    if (rc < 0)
        return rc;
    st->pnum = cs - in_cluster;
    if (st->pnum > bytes)
        st->pnum = bytes;
    if (entry == 0)
        return 0;
    if (entry & QCOW_OFLAG_COMPRESSED)
        return INS_BS_DATA | INS_BS_COMPRESSED;
    st->map = entry | in_cluster;
    st->file = img->file;
    return INS_BS_DATA | INS_BS_OFFSET_VALID;
}

/*
 * decompress_cluster(): the compressed cluster at `entry` into qi->cache.
 * Bits 62 .. 63 - cluster_bits hold the compressed size (less than a
 * cluster), the bits below the offset.  qemu runs one raw inflate with
 * Z_FINISH into a cluster-sized buffer and accepts it if the buffer is
 * full, whether the stream ended there or had more (Z_BUF_ERROR): the
 * output can never pass the cluster.  The cache is keyed by offset alone,
 * as qemu's is.
 */
static int qcow_decompress(struct qcow_image *qi, uint64_t entry)
{
    struct ins_ctx *ctx = qi->base.ctx;
    uint64_t cs = 1ull << qi->cluster_bits;
    uint64_t coffset = entry & ((1ull << (63 - qi->cluster_bits)) - 1);
    uint64_t csize = (entry >> (63 - qi->cluster_bits)) & (cs - 1);
    z_stream z;
    int zr;

    if (qi->cache_offset == coffset)
        return INS_OK;
    if (!qi->cache)
        qi->cache = ins_malloc(ctx, (size_t)cs);
    if (!qi->cdata)
        qi->cdata = ins_malloc(ctx, (size_t)cs);
    if (!qi->cache || !qi->cdata)
        return ins_error(ctx, INS_ENOMEM, "Out of memory");
    qi->cache_offset = UINT64_MAX;
    if (!bdrv_request_ok(coffset, csize) ||
        ins_read_zfill(qi->base.file, qi->cdata, (size_t)csize, coffset) < 0)
        return ins_error(ctx, INS_EIO, "could not read a compressed qcow cluster");
    memset(&z, 0, sizeof(z));
    z.zalloc = z_alloc;
    z.zfree = z_free;
    z.opaque = ctx;
    if (inflateInit2(&z, -12) != Z_OK)
        return ins_error(ctx, INS_EIO, "could not start zlib");
    z.next_in = qi->cdata;
    z.avail_in = (uInt)csize;
    z.next_out = qi->cache;
    z.avail_out = (uInt)cs;
    zr = inflate(&z, Z_FINISH);
    inflateEnd(&z);
    if ((zr != Z_STREAM_END && zr != Z_BUF_ERROR) || z.avail_out != 0)
        return ins_error(ctx, INS_EIO, "corrupt compressed qcow cluster");
    qi->cache_offset = coffset;
    return INS_OK;
}

/* qcow_co_preadv() for the clusters this layer holds. */
static int qcow_read(struct ins_image *img, void *buf, size_t len,
                     uint64_t offset)
{
    struct qcow_image *qi = (struct qcow_image *)img;
    uint64_t cs = 1ull << qi->cluster_bits;
    uint8_t *p = buf;

    if (qi->crypt_method)
        return no_key(img->ctx);
    while (len > 0) {
        uint64_t in_cluster = offset & (cs - 1), entry;
        size_t n = cs - in_cluster < len ? (size_t)(cs - in_cluster) : len;
        int rc = qcow_entry(qi, offset, &entry);

        if (rc < 0)
            return rc;
        if (entry == 0) {
            memset(p, 0, n);
        } else if (entry & QCOW_OFLAG_COMPRESSED) {
            rc = qcow_decompress(qi, entry);
            if (rc < 0)
                return rc;
            memcpy(p, qi->cache + in_cluster, n);
        } else {
            /* qemu: EIO for a cluster not on a sector boundary. */
            if ((entry & 511) != 0 || !bdrv_request_ok(entry + in_cluster, n))
                return ins_error(img->ctx, INS_EIO, "qcow cluster offset is invalid");
            rc = ins_read_zfill(img->file, p, n, entry + in_cluster);
            if (rc < 0)
                return rc;
        }
        p += n;
        offset += n;
        len -= n;
    }
    return INS_OK;
}

static int qcow_backing(struct ins_image *img, const char **name,
                        const char **format)
{
    struct qcow_image *qi = (struct qcow_image *)img;

    *name = qi->backing_file && qi->backing_file[0] ? qi->backing_file : NULL;
    *format = NULL;
    return INS_OK;
}

const struct ins_driver ins_drv_qcow = {
    .name = "qcow",
    .probe = qcow_probe,
    .open = qcow_open,
    .info = qcow_info,
    .close = qcow_close,
    .block_status = qcow_block_status,
    .read = qcow_read,
    .backing = qcow_backing,
    .supports_backing = 1,
};

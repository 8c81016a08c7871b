/*
 * qed.c - the QEMU Enhanced Disk format.
 *
 * A 64-byte little-endian header, a fixed-size L1 table and on-demand L2
 * tables, each table_size clusters long.  The header may name a backing
 * file (stored inside the header clusters); info reports it and does not
 * open it.  qemu-img info opens read-only, so an image flagged as needing
 * a check is not checked (nor reported dirty).
 */
#include "engine.h"
#include "fmt_check.h"

#include <string.h>

#define QED_MAGIC               0x00444551u     /* "QED\0" little-endian */
#define QED_HEADER_SIZE         64
#define QED_F_BACKING_FILE      0x01u
#define QED_F_NEED_CHECK        0x02u
#define QED_F_BACKING_NO_PROBE  0x04u
#define QED_FEATURE_MASK        0x07u
#define QED_MIN_CLUSTER_SIZE    (4u * 1024)
#define QED_MAX_CLUSTER_SIZE    (64u * 1024 * 1024)
#define QED_MIN_TABLE_SIZE      1u
#define QED_MAX_TABLE_SIZE      16u
#define QED_SECTOR              512u
/* qed_read_string() refuses names that do not fit bs->backing_file. */
#define QED_BACKING_NAME_MAX    4096u

/* The L1 table is loaded for reading only up to this size; qemu loads
 * it (up to 1 GiB) at open. */
#define QED_MAX_L1_BYTES        (64u << 20)

struct qed_header {
    uint32_t magic;
    uint32_t cluster_size;
    uint32_t table_size;        /* clusters */
    uint32_t header_size;       /* clusters */
    uint64_t features;
    uint64_t compat_features;
    uint64_t autoclear_features;
    uint64_t l1_table_offset;
    uint64_t image_size;
    uint32_t backing_filename_offset;
    uint32_t backing_filename_size;
};

struct qed_image {
    struct ins_image base;
    struct qed_header h;
    uint64_t file_size;         /* rounded down to a cluster */
    char *backing_file;         /* NULL without one */
    char *backing_format;       /* "raw" with the no-probe feature */
    uint64_t *l1;               /* loaded on first read */
    uint64_t *l2;               /* the last L2 table read, at l2_offset */
    uint64_t l2_offset;
    uint32_t table_nelems;
};

/* bdrv_qed_probe(): a whole header with the magic. */
static int qed_probe(struct ins_ctx *ctx, struct ins_bdev *file,
                     const uint8_t *head, size_t head_len)
{
    uint8_t h[QED_HEADER_SIZE];

    (void)ctx; (void)file;
    /* qemu probes 2048 bytes padded with zeros past end of file (an
     * empty file is raw before any probe). */
    if (head_len == 0)
        return 0;
    memset(h, 0, sizeof(h));
    memcpy(h, head, head_len < sizeof(h) ? head_len : sizeof(h));
    return ins_le32(h) == QED_MAGIC ? 100 : 0;
}

static void qed_decode(const uint8_t *b, struct qed_header *h)
{
    h->magic = ins_le32(b);
    h->cluster_size = ins_le32(b + 4);
    h->table_size = ins_le32(b + 8);
    h->header_size = ins_le32(b + 12);
    h->features = ins_le64(b + 16);
    h->compat_features = ins_le64(b + 24);
    h->autoclear_features = ins_le64(b + 32);
    h->l1_table_offset = ins_le64(b + 40);
    h->image_size = ins_le64(b + 48);
    h->backing_filename_offset = ins_le32(b + 56);
    h->backing_filename_size = ins_le32(b + 60);
}

static int is_pow2(uint32_t v)
{
    return (v & (v - 1)) == 0;
}

static int cluster_size_valid(uint32_t c)
{
    return c >= QED_MIN_CLUSTER_SIZE && c <= QED_MAX_CLUSTER_SIZE && is_pow2(c);
}

static int table_size_valid(uint32_t t)
{
    return t >= QED_MIN_TABLE_SIZE && t <= QED_MAX_TABLE_SIZE && is_pow2(t);
}

/* qed_max_image_size(), with qemu's 32-bit and wrapping 64-bit products. */
static uint64_t max_image_size(uint32_t cluster_size, uint32_t table_size)
{
    uint64_t entries = (uint32_t)(table_size * cluster_size) / 8u;
    uint64_t l2_size = entries * cluster_size;

    return l2_size * entries;
}

/* qed_check_cluster_offset(): aligned, past the header, inside the file. */
static int cluster_offset_valid(const struct qed_header *h, uint64_t file_size,
                                uint64_t offset)
{
    uint64_t header_bytes = (uint64_t)h->header_size * h->cluster_size;

    if (offset & (h->cluster_size - 1))
        return 0;
    return offset >= header_bytes && offset < file_size;
}

/* qed_check_table_offset(): the table's first and last clusters are
 * valid.  A one-cluster table fails qemu's "overflow" test, so does here. */
static int table_offset_valid(const struct qed_header *h, uint64_t file_size,
                              uint64_t offset)
{
    uint64_t end = offset + (uint32_t)((h->table_size - 1) * h->cluster_size);

    if (end <= offset)
        return 0;
    return cluster_offset_valid(h, file_size, offset) &&
           cluster_offset_valid(h, file_size, end);
}

/* The backing file name lives at an offset inside the header clusters. */
static int qed_read_backing(struct ins_ctx *ctx, struct ins_bdev *file,
                            struct qed_image *qi)
{
    const struct qed_header *h = &qi->h;
    uint32_t n = h->backing_filename_size;

    if ((uint64_t)h->backing_filename_offset + n >
        (uint64_t)h->cluster_size * h->header_size)
        return ins_error(ctx, INS_EINVAL, "QED backing filename offset is invalid");
    if (n >= QED_BACKING_NAME_MAX)
        return ins_error(ctx, INS_EINVAL, "Failed to read backing filename");
    qi->backing_file = ins_malloc(ctx, (size_t)n + 1);
    if (!qi->backing_file)
        return ins_error(ctx, INS_ENOMEM, "Out of memory");
    /* Past end of file the block layer reads zeros. */
    if (ins_read_zfill(file, qi->backing_file, n, h->backing_filename_offset) < 0)
        return ins_error(ctx, INS_EIO, "Failed to read backing filename");
    qi->backing_file[n] = '\0';
    if (h->features & QED_F_BACKING_NO_PROBE) {
        qi->backing_format = ins_strdup(ctx, "raw");
        if (!qi->backing_format)
            return ins_error(ctx, INS_ENOMEM, "Out of memory");
    }
    return INS_OK;
}

static void qed_close(struct ins_image *img)
{
    struct qed_image *qi = (struct qed_image *)img;

    if (!qi)
        return;
    ins_free(img->ctx, qi->backing_file);
    ins_free(img->ctx, qi->backing_format);
    ins_free(img->ctx, qi->l1);
    ins_free(img->ctx, qi->l2);
    ins_free(img->ctx, qi);
}

/* bdrv_qed_do_open()'s checks, in qemu's order. */
static int qed_check(struct ins_ctx *ctx, const struct qed_header *h,
                     uint64_t file_size)
{
    if (h->magic != QED_MAGIC)
        return ins_error(ctx, INS_EINVAL, "Image not in QED format");
    if (h->features & ~(uint64_t)QED_FEATURE_MASK)
        return ins_error(ctx, INS_ENOTSUP, "Unsupported QED features: %llx",
                         (unsigned long long)(h->features & ~(uint64_t)QED_FEATURE_MASK));
    if (!cluster_size_valid(h->cluster_size))
        return ins_error(ctx, INS_EINVAL, "QED cluster size is invalid");
    if (!table_size_valid(h->table_size))
        return ins_error(ctx, INS_EINVAL, "QED table size is invalid");
    if (h->image_size % QED_SECTOR != 0 ||
        h->image_size > max_image_size(h->cluster_size, h->table_size))
        return ins_error(ctx, INS_EINVAL, "QED image size is invalid");
    if (!table_offset_valid(h, file_size, h->l1_table_offset))
        return ins_error(ctx, INS_EINVAL, "QED table offset is invalid");
    if (h->header_size > UINT32_MAX / h->cluster_size)
        return ins_error(ctx, INS_EINVAL, "QED header size is too large");
    return INS_OK;
}

static int qed_open(struct ins_ctx *ctx, struct ins_bdev *file,
                    unsigned flags, struct ins_image **out)
{
    uint8_t buf[QED_HEADER_SIZE];
    struct qed_image *qi;
    int rc;

    (void)flags;
    if (ins_read_zfill(file, buf, sizeof(buf), 0) < 0)
        return ins_error(ctx, INS_EIO, "Failed to read QED header");
    qi = ins_calloc(ctx, 1, sizeof(*qi));
    if (!qi)
        return ins_error(ctx, INS_ENOMEM, "Out of memory");
    qi->base.drv = &ins_drv_qed;
    qi->base.ctx = ctx;
    qi->base.file = file;
    qed_decode(buf, &qi->h);
    /* The file size rounded down to a cluster (checked valid first). */
    if (cluster_size_valid(qi->h.cluster_size))
        qi->file_size = file->size & ~(uint64_t)(qi->h.cluster_size - 1);
    rc = qed_check(ctx, &qi->h, qi->file_size);
    if (rc == INS_OK && (qi->h.features & QED_F_BACKING_FILE))
        rc = qed_read_backing(ctx, file, qi);
    if (rc < 0) {
        qed_close(&qi->base);
        return rc;
    }
    qi->table_nelems = qi->h.cluster_size * qi->h.table_size / 8u;
    qi->base.virtual_size = qi->h.image_size;
    *out = &qi->base;
    return INS_OK;
}

static int qed_info(struct ins_image *img, struct tree_builder *tb,
                    struct ins_info *info)
{
    struct qed_image *qi = (struct qed_image *)img;

    (void)tb;
    info->virtual_size = qi->h.image_size;
    info->has_cluster_size = 1;
    info->cluster_size = qi->h.cluster_size;
    /* qemu's bdrv_qed_get_info() leaves is_dirty clear, even for an
     * image flagged as needing a check. */
    info->has_dirty_flag = 1;
    if (qi->backing_file) {
        info->backing_filename = ins_strdup(img->ctx, qi->backing_file);
        if (!info->backing_filename)
            return ins_error(img->ctx, INS_ENOMEM, "Out of memory");
    }
    if (qi->backing_format) {
        info->backing_format = ins_strdup(img->ctx, qi->backing_format);
        if (!info->backing_format)
            return ins_error(img->ctx, INS_ENOMEM, "Out of memory");
    }
    return INS_OK;
}

/* ---- reading ---- */

static int read_table(struct qed_image *qi, uint64_t offset, uint64_t *table)
{
    size_t i, n = qi->table_nelems;
    uint8_t *raw = (uint8_t *)table;
    int rc = ins_read_zfill(qi->base.file, raw, n * 8, offset);

    if (rc < 0)
        return ins_error(qi->base.ctx, rc, "Failed to read QED table");
    for (i = 0; i < n; i++)
        table[i] = ins_le64(raw + 8 * i);
    return INS_OK;
}

static int qed_load_l1(struct qed_image *qi)
{
    struct ins_ctx *ctx = qi->base.ctx;
    uint64_t bytes = (uint64_t)qi->table_nelems * 8;

    if (qi->l1)
        return INS_OK;
    if (bytes > QED_MAX_L1_BYTES)
        return ins_error(ctx, INS_EFBIG, "QED table of %llu bytes is too large",
                         (unsigned long long)bytes);
    qi->l1 = ins_malloc(ctx, (size_t)bytes);
    if (!qi->l1)
        return ins_error(ctx, INS_ENOMEM, "Out of memory");
    if (read_table(qi, qi->h.l1_table_offset, qi->l1) < 0) {
        ins_free(ctx, qi->l1);
        qi->l1 = NULL;
        return INS_EIO;
    }
    return INS_OK;
}

/*
 * qed_find_cluster() + bdrv_qed_co_block_status() for one cluster: an
 * invalid table or data offset is an I/O error (qemu's -EINVAL), 0 is
 * unallocated (the backing file's), 1 reads as zeros.
 */
static int qed_block_status(struct ins_image *img, uint64_t offset,
                            uint64_t bytes, struct ins_bstat *st)
{
    struct qed_image *qi = (struct qed_image *)img;
    struct ins_ctx *ctx = img->ctx;
    uint32_t cs = qi->h.cluster_size;
    uint64_t cluster_bytes = (uint64_t)qi->table_nelems * cs;
    uint64_t l1_index = offset / cluster_bytes;
    uint64_t l2_index = offset / cs % qi->table_nelems;
    uint64_t in_cluster = offset % cs;
    uint64_t l2_offset, entry;
    int rc = qed_load_l1(qi);

    if (rc < 0)
        return rc;
    st->pnum = cs - in_cluster;
    if (st->pnum > bytes)
        st->pnum = bytes;
    if (l1_index >= qi->table_nelems)
        return 0;
    l2_offset = qi->l1[l1_index];
    if (l2_offset == 0)
        return 0;
    if (!table_offset_valid(&qi->h, qi->file_size, l2_offset))
        return ins_error(ctx, INS_EIO, "QED L2 table offset is invalid");
    if (!qi->l2) {
        qi->l2 = ins_malloc(ctx, (size_t)qi->table_nelems * 8);
        if (!qi->l2)
            return ins_error(ctx, INS_ENOMEM, "Out of memory");
    }
    if (qi->l2_offset != l2_offset) {
        qi->l2_offset = 0;
        rc = read_table(qi, l2_offset, qi->l2);
        if (rc < 0)
            return rc;
        qi->l2_offset = l2_offset;
    }
    entry = qi->l2[l2_index];
    if (entry == 0)
        return 0;
    if (entry == 1)
        return INS_BS_ZERO;
    if (!cluster_offset_valid(&qi->h, qi->file_size, entry))
        return ins_error(ctx, INS_EIO, "QED cluster offset is invalid");
    st->map = entry + in_cluster;
    st->file = img->file;
    return INS_BS_DATA | INS_BS_OFFSET_VALID;
}

static int qed_backing(struct ins_image *img, const char **name,
                       const char **format)
{
    struct qed_image *qi = (struct qed_image *)img;

    *name = qi->backing_file && qi->backing_file[0] ? qi->backing_file : NULL;
    *format = qi->backing_format;
    return INS_OK;
}

void ins_qed_layout(const struct ins_image *img, struct qed_layout *l)
{
    const struct qed_image *qi = (const struct qed_image *)img;

    l->cluster_size = qi->h.cluster_size;
    l->table_size = qi->h.table_size;
    l->header_size = qi->h.header_size;
    l->features = qi->h.features;
    l->l1_table_offset = qi->h.l1_table_offset;
    l->image_size = qi->h.image_size;
    l->file_size = qi->file_size;
}

const struct ins_driver ins_drv_qed = {
    .name = "qed",
    .probe = qed_probe,
    .open = qed_open,
    .info = qed_info,
    .close = qed_close,
    .block_status = qed_block_status,
    .read = ins_read_mapped,
    .plain_map = 1,
    .backing = qed_backing,
    .supports_backing = 1,
    .check = ins_qed_check,
};

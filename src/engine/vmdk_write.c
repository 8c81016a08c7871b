/*
 * vmdk_write.c - writing VMDK images: monolithicSparse, streamOptimized,
 * monolithicFlat, twoGbMaxExtentSparse and twoGbMaxExtentFlat.
 *
 * The layout is qemu's (block/vmdk.c: vmdk_init_extent, vmdk_co_do_create
 * and the write path qemu-img convert uses):
 *
 *   sparse extent:  header (sector 0), descriptor area (sectors 1-20, only
 *                   used in the image's own file), redundant grain
 *                   directory and its grain tables, grain directory and
 *                   its grain tables, then grains from a 64 KiB boundary
 *                   on, appended in the order they are first written.
 *                   Both grain tables get every entry.
 *   streamOptimized: the same with version 3, deflate grains behind
 *                   12-byte markers packed one after the other; qemu
 *                   zero-fills one grain's worth behind the last one.
 *                   instar also writes a footer and an end-of-stream
 *                   marker there (inside that zero padding), which
 *                   streaming consumers (ESXi, cloud importers) look for
 *                   and qemu ignores.
 *   flat extent:    the guest bytes.
 *
 * The descriptor file of the split and flat subformats holds only the
 * descriptor text.  qemu rewrites the descriptor with a new CID on the
 * first guest write, padding it to whole sectors: we write it once in its
 * final form.  With a backing file, its CID becomes parentCID.
 *
 * A new grain is written whole with zeros around the data.  qemu copies
 * the backing file's data there instead (COW); the convert pipeline does
 * the same before it hands over a grain, so writes of part of a grain
 * (zeros, see vmdk_write_zeroes) are left to it.
 */
#include <stdio.h>
#include <zlib.h>

#include "vmdk.h"
#include "wutil.h"

#define VMDK_GRAIN          65536u
#define VMDK_GRAIN_SECTORS  128u
#define VMDK_GTES           512u                /* entries per grain table */
#define VMDK_GT_SECTORS     4u
#define VMDK_DESC_SECTORS   20u
#define VMDK_SPLIT_SIZE     0x80000000ull       /* twoGbMaxExtent* extents */
#define VMDK_MAX_SECTORS    (1ull << 32)        /* GTEs are 32-bit sectors */

#define VMDK_FLAG_NL_DETECT (1u << 0)
#define VMDK_FLAG_RGD       (1u << 1)
#define VMDK_FLAG_ZERO_GRAIN (1u << 2)
#define VMDK_FLAG_COMPRESS  (1u << 16)
#define VMDK_FLAG_MARKER    (1u << 17)

enum vmdk_sub { SUB_SPARSE, SUB_FLAT, SUB_SPLIT_SPARSE, SUB_SPLIT_FLAT,
                SUB_STREAM };

static const char *const sub_names[] = {
    "monolithicSparse", "monolithicFlat", "twoGbMaxExtentSparse",
    "twoGbMaxExtentFlat", "streamOptimized",
};

static const char *const adapter_names[] = {
    "ide", "buslogic", "lsilogic", "legacyESX",
};

struct vmdk_wext {
    struct ins_bdev *bd;
    int flat;
    uint64_t start;             /* first guest byte */
    uint64_t bytes;             /* guest bytes covered */
    uint8_t header[512];        /* sparse: the header sector */
    uint64_t rgd_off, gd_off;   /* sectors */
    uint32_t gd_sectors, gt_count;
    uint64_t next_sector;       /* where the next grain goes */
    /* The grain table being filled (writes come in ascending order). */
    uint32_t *gt;               /* VMDK_GTES entries, host order */
    int64_t gt_index;           /* -1: none loaded */
    int gt_dirty;
    uint32_t gt_lo, gt_hi;      /* changed entries [lo, hi] */
    uint64_t last_grain;        /* stream: sector of the last grain, or 0 */
};

struct vmdk_w {
    struct ins_wimage w;
    enum vmdk_sub sub;
    int compress, zeroed_grain;
    struct vmdk_wext *ext;
    size_t n_ext;
    char *desc;                 /* descriptor text */
    size_t desc_len;
    uint64_t desc_offset;       /* bytes into out */
    int written;                /* any guest write yet (qemu's CID update) */
    uint8_t *grain;             /* one grain of bounce buffer */
    /* streamOptimized: the grain being filled by uncompressed writes,
     * compressed once a later grain is written (or at finish). */
    uint8_t *pend;
    uint64_t pend_off;
    int pending;
};

static int opt_enum(struct ins_ctx *ctx, const char *v,
                    const char *const *names, int n, int *out)
{
    for (int i = 0; i < n; i++) {
        if (strcmp(v, names[i]) == 0) {
            *out = i;
            return INS_OK;
        }
    }
    return ins_error(ctx, INS_EINVAL, "invalid parameter value: %s", v);
}

/* The header and (redundant) grain directories of a sparse extent of
 * bytes guest bytes, as qemu's vmdk_init_extent() lays them out. */
static int init_sparse(struct vmdk_w *v, struct vmdk_wext *e)
{
    struct ins_ctx *ctx = v->w.ctx;
    uint8_t *h = e->header;
    uint64_t capacity = e->bytes / 512, grains, grain_off;
    uint32_t flags, version, *gd;
    size_t gd_bytes;
    int rc;

    grains = (capacity + VMDK_GRAIN_SECTORS - 1) / VMDK_GRAIN_SECTORS;
    e->gt_count = (uint32_t)((grains + VMDK_GTES - 1) / VMDK_GTES);
    e->gd_sectors = (e->gt_count * 4 + 511) / 512;
    e->rgd_off = 1 + VMDK_DESC_SECTORS;
    e->gd_off = e->rgd_off + e->gd_sectors +
                (uint64_t)VMDK_GT_SECTORS * e->gt_count;
    grain_off = e->gd_off + e->gd_sectors +
                (uint64_t)VMDK_GT_SECTORS * e->gt_count;
    grain_off = (grain_off + VMDK_GRAIN_SECTORS - 1) / VMDK_GRAIN_SECTORS *
                VMDK_GRAIN_SECTORS;
    e->next_sector = grain_off;
    e->gt_index = -1;

    version = v->compress ? 3 : v->zeroed_grain ? 2 : 1;
    flags = VMDK_FLAG_RGD | VMDK_FLAG_NL_DETECT;
    if (v->compress)
        flags |= VMDK_FLAG_COMPRESS | VMDK_FLAG_MARKER;
    if (v->zeroed_grain)
        flags |= VMDK_FLAG_ZERO_GRAIN;
    memset(h, 0, 512);
    memcpy(h, "KDMV", 4);
    w_le32(h + 4, version);
    w_le32(h + 8, flags);
    w_le64(h + 12, capacity);
    w_le64(h + 20, VMDK_GRAIN_SECTORS);
    w_le64(h + 28, 1);                          /* descriptor offset */
    w_le64(h + 36, VMDK_DESC_SECTORS);
    w_le32(h + 44, VMDK_GTES);
    w_le64(h + 48, e->rgd_off);
    w_le64(h + 56, e->gd_off);
    w_le64(h + 64, grain_off);
    h[72] = 0;
    memcpy(h + 73, "\n \r\n", 4);               /* newline-mangling check */
    w_le16(h + 77, v->compress ? 1 : 0);        /* deflate */

    rc = ins_write(e->bd, h, 512, 0);
    if (rc == 0)
        rc = ins_truncate(e->bd, grain_off * 512);
    if (rc)
        return ins_error(ctx, rc, "failed to write VMDK header: %s",
                         ins_strerror(rc));

    e->gt = ins_calloc(ctx, VMDK_GTES, 4);
    if (!e->gt)
        return ins_error(ctx, INS_ENOMEM, "Cannot allocate memory");
    if (!e->gt_count)
        return INS_OK;
    gd_bytes = (size_t)e->gd_sectors * 512;
    gd = ins_calloc(ctx, 1, gd_bytes);
    if (!gd)
        return ins_error(ctx, INS_ENOMEM, "Cannot allocate memory");
    for (uint32_t i = 0; i < e->gt_count; i++)
        w_le32((uint8_t *)&gd[i], (uint32_t)(e->rgd_off + e->gd_sectors +
                                             (uint64_t)i * VMDK_GT_SECTORS));
    rc = ins_write(e->bd, gd, gd_bytes, e->rgd_off * 512);
    if (rc == 0) {
        for (uint32_t i = 0; i < e->gt_count; i++)
            w_le32((uint8_t *)&gd[i],
                   (uint32_t)(e->gd_off + e->gd_sectors +
                              (uint64_t)i * VMDK_GT_SECTORS));
        rc = ins_write(e->bd, gd, gd_bytes, e->gd_off * 512);
    }
    ins_free(ctx, gd);
    if (rc)
        return ins_error(ctx, rc, "failed to write VMDK grain directory: %s",
                         ins_strerror(rc));
    return INS_OK;
}

static const char *base_name(const char *path)
{
    const char *s = strrchr(path, '/');

    return s ? s + 1 : path;
}

/* Appends printf output to the descriptor. */
static int desc_add(struct vmdk_w *v, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static int desc_add(struct vmdk_w *v, const char *fmt, ...)
{
    va_list ap;
    int n;
    char *p;

    va_start(ap, fmt);
    n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        return INS_EINVAL;
    p = ins_realloc(v->w.ctx, v->desc, v->desc_len + (size_t)n + 1);
    if (!p)
        return INS_ENOMEM;
    v->desc = p;
    va_start(ap, fmt);
    vsnprintf(p + v->desc_len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    v->desc_len += (size_t)n;
    return INS_OK;
}

static int build_desc(struct vmdk_w *v, const struct ins_create *cr,
                      int adapter, const char *hw, const char *tools,
                      uint32_t parent_cid, const char *parent)
{
    uint32_t cid = ins_le32(cr->random);
    uint64_t heads = adapter == 0 ? 16 : 255;
    int rc;

    /* With a parent its hint line takes the blank line's place. */
    rc = desc_add(v, "# Disk DescriptorFile\nversion=1\nCID=%x\n"
                  "parentCID=%x\ncreateType=\"%s\"\n%s%s%s\n"
                  "# Extent description\n", cid, parent_cid,
                  sub_names[v->sub], parent ? "parentFileNameHint=\"" : "",
                  parent ? parent : "", parent ? "\"" : "");
    for (size_t i = 0; rc == 0 && i < v->n_ext; i++) {
        const struct vmdk_wext *e = &v->ext[i];

        if (e->flat)
            rc = desc_add(v, "RW %llu FLAT \"%s\" 0\n",
                          (unsigned long long)(e->bytes / 512),
                          base_name(e->bd->name));
        else
            rc = desc_add(v, "RW %llu SPARSE \"%s\"\n",
                          (unsigned long long)(e->bytes / 512),
                          base_name(e->bd->name));
    }
    if (rc == 0)
        rc = desc_add(v, "\n# The Disk Data Base\n#DDB\n\n"
                      "ddb.virtualHWVersion = \"%s\"\n"
                      "ddb.geometry.cylinders = \"%llu\"\n"
                      "ddb.geometry.heads = \"%llu\"\n"
                      "ddb.geometry.sectors = \"63\"\n"
                      "ddb.adapterType = \"%s\"\n"
                      "ddb.toolsVersion = \"%s\"\n", hw,
                      (unsigned long long)(v->w.virtual_size /
                                           (63 * heads * 512)),
                      (unsigned long long)heads, adapter_names[adapter],
                      tools);
    if (rc)
        return ins_error(v->w.ctx, rc, "Cannot allocate memory");
    return INS_OK;
}

/* The descriptor as it stands after qemu's CID update when guest data was
 * written (padded to whole sectors), else as created. */
static int put_desc(struct vmdk_w *v, int padded)
{
    size_t len = v->desc_len, cap;
    uint8_t *buf;
    int rc;

    if (!padded) {
        rc = ins_write(v->w.out, v->desc, len, v->desc_offset);
        if (rc == 0 && v->desc_offset == 0)
            rc = ins_truncate(v->w.out, len);
        return rc;
    }
    cap = v->desc_offset ? VMDK_DESC_SECTORS * 512 : (len + 511) & ~(size_t)511;
    if (len > cap)
        len = cap;
    buf = ins_calloc(v->w.ctx, 1, cap);
    if (!buf)
        return INS_ENOMEM;
    memcpy(buf, v->desc, len);
    rc = ins_write(v->w.out, buf, cap, v->desc_offset);
    ins_free(v->w.ctx, buf);
    return rc;
}

/* qemu's option checks, in its order.  Sets the subformat and such. */
static int parse_opts(struct ins_ctx *ctx, const struct ins_create *cr,
                      int *sub, int *adapter, const char **hw,
                      const char **tools, int *zeroed)
{
    const char *s;
    int rc;

    s = wopt_str(cr->opts, "backing_fmt");
    if (!s)
        s = cr->backing_format;
    if (s && strcmp(s, "vmdk") != 0)
        return ins_error(ctx, INS_EINVAL, "backing_file must be a vmdk image");
    *adapter = 0;
    s = wopt_str(cr->opts, "adapter_type");
    if (s && (rc = opt_enum(ctx, s, adapter_names, 4, adapter)))
        return rc;
    *sub = SUB_SPARSE;
    s = wopt_str(cr->opts, "subformat");
    if (s && (rc = opt_enum(ctx, s, sub_names, 5, sub)))
        return rc;
    *hw = wopt_str(cr->opts, "hwversion");
    if (*hw && strcmp(*hw, "undefined") == 0)
        *hw = NULL;
    if (wopt_bool(cr->opts, "compat6", 0)) {
        if (*hw)
            return ins_error(ctx, INS_EINVAL,
                             "compat6 cannot be enabled with hwversion set");
        *hw = "6";
    }
    if (!*hw)
        *hw = "4";
    *tools = wopt_str(cr->opts, "toolsversion");
    if (!*tools)
        *tools = "2147483647";
    *zeroed = wopt_bool(cr->opts, "zeroed_grain", 0);
    if (*sub == SUB_FLAT || *sub == SUB_SPLIT_FLAT) {
        if (cr->backing_file || wopt_str(cr->opts, "backing_file"))
            return ins_error(ctx, INS_ENOTSUP,
                             "Flat image can't have backing file");
        if (*zeroed)
            return ins_error(ctx, INS_ENOTSUP,
                             "Flat image can't enable zeroed grain");
    }
    /* Creating the first file checks the file protocol's options. */
    return w_check_file_prealloc(ctx, cr->opts);
}

static void vmdk_close(struct ins_wimage *w);

/*
 * The backing file's CID, as qemu's create reads it: the file must open
 * (through the host's policy) and be a vmdk image.
 */
static int parent_cid(struct ins_ctx *ctx, struct ins_bdev *out,
                      const char *backing, uint32_t *cid)
{
    const struct ins_driver *drv = NULL;
    struct ins_image *img;
    struct ins_bdev *bd;
    int rc;

    rc = ctx->open_ref(ctx, INS_REF_BACKING, out->name, backing, &bd);
    if (rc == INS_ENOENT) {
        const char *slash = strrchr(out->name, '/');

        if (backing[0] == '/' || !slash)
            return ins_error(ctx, rc, "Could not open '%s': No such file or "
                             "directory", backing);
        return ins_error(ctx, rc, "Could not open '%.*s%s': No such file or "
                         "directory", (int)(slash + 1 - out->name), out->name,
                         backing);
    }
    if (rc < 0)
        return rc;
    if (ins_select_driver(ctx, bd, NULL, 0, &drv) < 0 || drv != &ins_drv_vmdk)
        return ins_error(ctx, INS_EINVAL, "Invalid backing file format: %s. "
                         "Must be vmdk", drv ? drv->name : "raw");
    rc = drv->open(ctx, bd, 0, &img);
    if (rc < 0)
        return rc;
    *cid = ((struct vmdk_image *)img)->cid;
    drv->close(img);
    return INS_OK;
}

/* A flat extent: the file at its size, grown as qemu's file driver does. */
static int flat_init(struct vmdk_wext *e)
{
    return ins_grow_empty(e->bd, e->bytes);
}

static int vmdk_create(struct ins_ctx *ctx, struct ins_bdev *out,
                       const struct ins_create *cr, struct ins_wimage **img)
{
    struct vmdk_w *v;
    const char *hw = NULL, *tools = NULL, *backing;
    uint32_t pcid = 0xffffffffu;
    int sub = 0, adapter = 0, zeroed = 0, split, flat, rc;
    uint64_t size, n_ext, want_extra;

    rc = parse_opts(ctx, cr, &sub, &adapter, &hw, &tools, &zeroed);
    if (rc)
        return rc;
    backing = cr->backing_file ? cr->backing_file
                               : wopt_str(cr->opts, "backing_file");
    if (backing && (rc = parent_cid(ctx, out, backing, &pcid)) != 0)
        return rc;
    if (cr->size > UINT64_MAX - 511)
        return ins_error(ctx, INS_EFBIG, "Image size too large");
    size = (cr->size + 511) & ~511ull;
    split = sub == SUB_SPLIT_SPARSE || sub == SUB_SPLIT_FLAT;
    flat = sub == SUB_FLAT || sub == SUB_SPLIT_FLAT;
    /* qemu counts grains in 32 bits (256 TiB); grain offsets are 32-bit
     * sectors too, so a sparse file fills up at 2 TiB of data. */
    if (!flat && size / VMDK_GRAIN >= UINT32_MAX)
        return ins_error(ctx, INS_EFBIG, "Image size too large");

    if (split) {
        n_ext = (size + VMDK_SPLIT_SIZE - 1) / VMDK_SPLIT_SIZE;
        want_extra = n_ext;
    } else if (flat) {
        n_ext = size ? 1 : 0;
        want_extra = n_ext;
    } else {
        n_ext = 1;
        want_extra = 0;
    }
    if (cr->n_extra != want_extra)
        return ins_error(ctx, INS_EINVAL, "vmdk %s needs %llu extent files, "
                         "got %zu", sub_names[sub],
                         (unsigned long long)want_extra, cr->n_extra);

    v = ins_calloc(ctx, 1, sizeof(*v));
    if (!v)
        return ins_error(ctx, INS_ENOMEM, "Cannot allocate memory");
    v->w.wr = &ins_wr_vmdk;
    v->w.ctx = ctx;
    v->w.out = out;
    v->w.virtual_size = size;
    v->w.granularity = flat ? 512 : VMDK_GRAIN;
    v->w.zero_init = 1;
    v->sub = (enum vmdk_sub)sub;
    v->compress = sub == SUB_STREAM;
    /* Every grain of a streamOptimized image is compressed: convert then
     * compresses on its reader threads (qemu's needs_compressed_writes). */
    v->w.needs_compressed_writes = v->compress;
    v->zeroed_grain = zeroed;
    v->n_ext = (size_t)n_ext;
    v->ext = ins_calloc(ctx, v->n_ext ? v->n_ext : 1, sizeof(*v->ext));
    if (!v->ext) {
        ins_free(ctx, v);
        return ins_error(ctx, INS_ENOMEM, "Cannot allocate memory");
    }

    for (size_t i = 0; i < v->n_ext; i++) {
        struct vmdk_wext *e = &v->ext[i];

        e->flat = flat;
        e->start = split ? i * VMDK_SPLIT_SIZE : 0;
        e->bytes = split ? (size - e->start < VMDK_SPLIT_SIZE ?
                            size - e->start : VMDK_SPLIT_SIZE) : size;
        e->bd = (split || flat) ? cr->extra[i] : out;
        e->gt_index = -1;
        if (flat)
            rc = flat_init(e);
        else
            rc = init_sparse(v, e);
        if (rc) {
            if (flat)
                ins_error(ctx, rc, "%s", ins_strerror(rc));
            goto fail;
        }
    }

    v->desc_offset = (split || flat) ? 0 : 512;
    rc = build_desc(v, cr, adapter, hw, tools, pcid, backing);
    if (rc == 0) {
        rc = put_desc(v, 0);
        if (rc)
            ins_error(ctx, rc, "Could not write description: %s",
                      ins_strerror(rc));
    }
    if (rc)
        goto fail;
    *img = &v->w;
    return INS_OK;
fail:
    vmdk_close(&v->w);
    return rc;
}

/* Writes the loaded grain table to both of its places. */
static int gt_flush(struct vmdk_wext *e)
{
    uint8_t buf[VMDK_GTES * 4];
    uint64_t i = (uint64_t)e->gt_index;
    int rc;

    uint64_t at = (uint64_t)e->gt_lo * 4;
    size_t n = (size_t)(e->gt_hi - e->gt_lo + 1) * 4;

    if (e->gt_index < 0 || !e->gt_dirty)
        return INS_OK;
    /* Only the entries that changed, as qemu writes entry by entry: the
     * same file system blocks get allocated. */
    for (uint32_t k = e->gt_lo; k <= e->gt_hi; k++)
        w_le32(buf + 4 * k, e->gt[k]);
    rc = ins_write(e->bd, buf + at, n,
                   (e->rgd_off + e->gd_sectors + i * VMDK_GT_SECTORS) * 512 + at);
    if (rc == 0)
        rc = ins_write(e->bd, buf + at, n,
                       (e->gd_off + e->gd_sectors + i * VMDK_GT_SECTORS) * 512 + at);
    e->gt_dirty = 0;
    return rc;
}

/* Entry k of the loaded grain table changed. */
static void gt_mark(struct vmdk_wext *e, uint32_t k)
{
    if (!e->gt_dirty || k < e->gt_lo)
        e->gt_lo = k;
    if (!e->gt_dirty || k > e->gt_hi)
        e->gt_hi = k;
    e->gt_dirty = 1;
}

/* Loads the grain table covering grain g (in extent order). */
static int gt_load(struct vmdk_wext *e, uint64_t g)
{
    int64_t idx = (int64_t)(g / VMDK_GTES);
    uint8_t buf[VMDK_GTES * 4];
    int rc;

    if (idx == e->gt_index)
        return INS_OK;
    rc = gt_flush(e);
    if (rc)
        return rc;
    /* Out-of-order writes reread what an earlier flush stored. */
    rc = ins_read_zfill(e->bd, buf, sizeof(buf),
                        (e->gd_off + e->gd_sectors +
                         (uint64_t)idx * VMDK_GT_SECTORS) * 512);
    if (rc)
        return rc;
    for (uint32_t k = 0; k < VMDK_GTES; k++)
        e->gt[k] = ins_le32(buf + 4 * k);
    e->gt_index = idx;
    return INS_OK;
}

static struct vmdk_wext *find_ext(struct vmdk_w *v, uint64_t offset)
{
    for (size_t i = 0; i < v->n_ext; i++)
        if (offset >= v->ext[i].start &&
            offset - v->ext[i].start < v->ext[i].bytes)
            return &v->ext[i];
    return NULL;
}

static int check_range(struct ins_wimage *w, uint64_t offset, size_t len)
{
    if (offset > w->virtual_size || len > w->virtual_size - offset)
        return ins_error(w->ctx, INS_EINVAL, "write beyond the end of the image");
    return INS_OK;
}

/* One piece inside one grain of a sparse extent, uncompressed. */
static int write_sparse(struct vmdk_w *v, struct vmdk_wext *e,
                        const uint8_t *p, size_t n, uint64_t eoff)
{
    uint64_t g = eoff / VMDK_GRAIN;
    uint32_t in = (uint32_t)(eoff % VMDK_GRAIN);
    uint32_t *gte;
    int rc;

    rc = gt_load(e, g);
    if (rc)
        return rc;
    gte = &e->gt[g % VMDK_GTES];
    if (*gte > 1)
        return ins_write(e->bd, p, n, (uint64_t)*gte * 512 + in);
    if (v->compress)
        return ins_error(v->w.ctx, INS_EINVAL, "Could not write to allocated "
                         "cluster for streamOptimized");
    /* A new grain, written whole with zeros around the data. */
    if (e->next_sector >= VMDK_MAX_SECTORS)
        return ins_error(v->w.ctx, INS_EFBIG, "vmdk extent is full");
    if (!v->grain) {
        v->grain = ins_malloc(v->w.ctx, VMDK_GRAIN);
        if (!v->grain)
            return ins_error(v->w.ctx, INS_ENOMEM, "Cannot allocate memory");
    }
    memset(v->grain, 0, VMDK_GRAIN);
    memcpy(v->grain + in, p, n);
    rc = ins_write(e->bd, v->grain, VMDK_GRAIN, e->next_sector * 512);
    if (rc)
        return rc;
    *gte = (uint32_t)e->next_sector;
    gt_mark(e, (uint32_t)(g % VMDK_GTES));
    e->next_sector += VMDK_GRAIN_SECTORS;
    return INS_OK;
}

static void z_free(void *opaque, void *p)
{
    ins_free(opaque, p);
}

static void *z_alloc(void *opaque, unsigned items, unsigned size)
{
    return ins_calloc(opaque, items, size);
}

/* zlib's compress() (default level, zlib wrapper), as qemu calls it. */
static int vmdk_compress(const struct ins_wimage *w, const void *in,
                         size_t len, void *out, size_t out_cap,
                         size_t *out_len)
{
    z_stream z;
    int zr;

    /* Other subformats take compressed writes uncompressed, as qemu. */
    if (!((const struct vmdk_w *)w)->compress)
        return INS_ENOTSUP;
    memset(&z, 0, sizeof(z));
    z.zalloc = z_alloc;
    z.zfree = z_free;
    z.opaque = w->ctx;
    if (deflateInit(&z, Z_DEFAULT_COMPRESSION) != Z_OK)
        return INS_ENOMEM;
    z.next_in = (Bytef *)(uintptr_t)in;
    z.avail_in = (uInt)len;
    z.next_out = out;
    z.avail_out = (uInt)out_cap;
    zr = deflate(&z, Z_FINISH);
    *out_len = out_cap - z.avail_out;
    deflateEnd(&z);
    if (zr != Z_STREAM_END || *out_len == 0)
        return INS_EFBIG;
    return INS_OK;
}

static int stream_flush(struct vmdk_w *v);

static int vmdk_write_compressed(struct ins_wimage *w, const void *data,
                                 size_t len, uint64_t offset)
{
    struct vmdk_w *v = (struct vmdk_w *)w;
    struct vmdk_wext *e;
    uint64_t g, eoff, end;
    uint8_t marker[12];
    uint32_t *gte;
    int rc;

    if (!v->compress)
        return ins_error(w->ctx, INS_ENOTSUP, "Compression is not supported "
                         "for this vmdk subformat");
    if ((rc = check_range(w, offset, 1)) != 0)
        return rc;
    if (v->pending && v->pend_off != offset && (rc = stream_flush(v)) != 0)
        return rc;
    e = find_ext(v, offset);
    if (!e || (offset - e->start) % VMDK_GRAIN || len > 0xffffffffu)
        return ins_error(w->ctx, INS_EINVAL, "unaligned compressed write");
    eoff = offset - e->start;
    g = eoff / VMDK_GRAIN;
    rc = gt_load(e, g);
    if (rc)
        return rc;
    gte = &e->gt[g % VMDK_GTES];
    if (*gte)
        return ins_error(w->ctx, INS_EIO, "Could not write to allocated "
                         "cluster for streamOptimized");
    if (e->next_sector >= VMDK_MAX_SECTORS)
        return ins_error(w->ctx, INS_EFBIG, "vmdk extent is full");
    w_le64(marker, offset / 512);
    w_le32(marker + 8, (uint32_t)len);
    rc = ins_write(e->bd, marker, sizeof(marker), e->next_sector * 512);
    if (rc == 0)
        rc = ins_write(e->bd, data, len, e->next_sector * 512 + sizeof(marker));
    if (rc)
        return rc;
    *gte = (uint32_t)e->next_sector;
    gt_mark(e, (uint32_t)(g % VMDK_GTES));
    e->last_grain = e->next_sector;
    end = e->next_sector * 512 + sizeof(marker) + len;
    e->next_sector = (end + 511) / 512;
    v->written = 1;
    return INS_OK;
}

/*
 * qemu compresses every grain of a streamOptimized image, and writes each
 * grain once.  Uncompressed writes may come in pieces (several for one
 * grain when zeros are written explicitly over a backing file), so they
 * gather in a grain buffer that is compressed when the writes move on.
 */
static int stream_flush(struct vmdk_w *v)
{
    uint64_t n = v->w.virtual_size - v->pend_off;
    size_t clen, cap = VMDK_GRAIN * 2;
    uint8_t *cbuf;
    int rc;

    if (!v->pending)
        return INS_OK;
    v->pending = 0;
    if (n > VMDK_GRAIN)
        n = VMDK_GRAIN;
    cbuf = ins_malloc(v->w.ctx, cap);
    if (!cbuf)
        return ins_error(v->w.ctx, INS_ENOMEM, "Cannot allocate memory");
    /* A short last grain is compressed as it is, like qemu. */
    rc = vmdk_compress(&v->w, v->pend, (size_t)n, cbuf, cap, &clen);
    if (rc == 0)
        rc = vmdk_write_compressed(&v->w, cbuf, clen, v->pend_off);
    else
        rc = ins_error(v->w.ctx, rc, "compression failed");
    ins_free(v->w.ctx, cbuf);
    return rc;
}

static int stream_put(struct vmdk_w *v, const uint8_t *p, size_t n,
                      uint64_t offset)
{
    uint64_t gstart = offset / VMDK_GRAIN * VMDK_GRAIN;
    int rc;

    if (v->pending && v->pend_off != gstart && (rc = stream_flush(v)) != 0)
        return rc;
    if (!v->pend) {
        v->pend = ins_malloc(v->w.ctx, VMDK_GRAIN);
        if (!v->pend)
            return ins_error(v->w.ctx, INS_ENOMEM, "Cannot allocate memory");
    }
    if (!v->pending) {
        memset(v->pend, 0, VMDK_GRAIN);
        v->pend_off = gstart;
        v->pending = 1;
    }
    memcpy(v->pend + (offset - gstart), p, n);
    return INS_OK;
}

static int vmdk_write(struct ins_wimage *w, const void *buf, size_t len,
                      uint64_t offset)
{
    struct vmdk_w *v = (struct vmdk_w *)w;
    const uint8_t *p = buf;
    int rc;

    if ((rc = check_range(w, offset, len)) != 0)
        return rc;
    if (len)
        v->written = 1;
    while (len > 0) {
        struct vmdk_wext *e = find_ext(v, offset);
        uint64_t eoff, room;
        size_t n;

        if (!e)
            return ins_error(w->ctx, INS_EIO, "no extent at %llu",
                             (unsigned long long)offset);
        eoff = offset - e->start;
        room = e->flat ? e->bytes - eoff : VMDK_GRAIN - eoff % VMDK_GRAIN;
        n = len < room ? len : (size_t)room;
        if (e->flat) {
            rc = ins_write(e->bd, p, n, eoff);
        } else if (v->compress) {
            rc = stream_put(v, p, n, offset);
        } else {
            rc = write_sparse(v, e, p, n, eoff);
        }
        if (rc)
            return rc;
        p += n;
        offset += n;
        len -= n;
    }
    return INS_OK;
}

/*
 * Explicit zeros (over a backing file's data, or convert -n).  With
 * zeroed_grain, whole grains of a sparse extent become zero grains (GTE
 * 1, no data), as qemu's vmdk_co_pwrite_zeroes() does; elsewhere qemu
 * falls back to writing zeros, and so do we.  Part of a grain is the
 * caller's to fill (INS_ENOTSUP): over a backing file the rest of the
 * grain is the backing file's data, as qemu's copy-on-write makes it.
 */
static int vmdk_write_zeroes(struct ins_wimage *w, uint64_t offset,
                             uint64_t len)
{
    struct vmdk_w *v = (struct vmdk_w *)w;
    uint8_t *zeros = NULL;
    int rc = INS_OK;

    if (len > SIZE_MAX || (rc = check_range(w, offset, (size_t)len)) != 0)
        return rc ? rc : ins_error(w->ctx, INS_EINVAL, "write too large");
    while (rc == 0 && len > 0) {
        struct vmdk_wext *e = find_ext(v, offset);
        uint64_t eoff, n;

        if (!e) {
            rc = ins_error(w->ctx, INS_EIO, "no extent at %llu",
                           (unsigned long long)offset);
            break;
        }
        eoff = offset - e->start;
        n = VMDK_GRAIN - eoff % VMDK_GRAIN;
        if (n > len)
            n = len;
        if (n < VMDK_GRAIN && offset + n < w->virtual_size) {
            rc = INS_ENOTSUP;
            break;
        }
        if (!e->flat && v->zeroed_grain && !v->compress && n == VMDK_GRAIN) {
            uint64_t g = eoff / VMDK_GRAIN;

            rc = gt_load(e, g);
            if (rc == 0 && e->gt[g % VMDK_GTES] != 1) {
                e->gt[g % VMDK_GTES] = 1;
                gt_mark(e, (uint32_t)(g % VMDK_GTES));
            }
        } else {
            if (!zeros && !(zeros = ins_calloc(w->ctx, 1, VMDK_GRAIN))) {
                rc = ins_error(w->ctx, INS_ENOMEM, "Cannot allocate memory");
                break;
            }
            rc = vmdk_write(w, zeros, (size_t)n, offset);
        }
        offset += n;
        len -= n;
    }
    ins_free(w->ctx, zeros);
    return rc;
}

/*
 * streamOptimized tail: qemu leaves one grain of zeros behind the last
 * compressed grain (it zero-fills each new grain before compressing into
 * it).  In that space go a footer marker, the footer (a header copy) and
 * the end-of-stream marker.
 */
static int stream_tail(struct vmdk_w *v, struct vmdk_wext *e)
{
    uint8_t *buf;
    uint64_t at = e->next_sector * 512, end, len;
    int rc;

    end = e->last_grain ? e->last_grain * 512 + VMDK_GRAIN : 0;
    len = 3 * 512;
    if (end > at + len)
        len = end - at;
    buf = ins_calloc(v->w.ctx, 1, (size_t)len);
    if (!buf)
        return ins_error(v->w.ctx, INS_ENOMEM, "Cannot allocate memory");
    w_le64(buf, 1);                     /* footer marker: one sector */
    w_le32(buf + 12, 3);
    memcpy(buf + 512, e->header, 512);
    /* buf + 1024: end-of-stream marker, all zeros. */
    rc = ins_write(e->bd, buf, (size_t)len, at);
    ins_free(v->w.ctx, buf);
    return rc;
}

static int vmdk_finish(struct ins_wimage *w)
{
    struct vmdk_w *v = (struct vmdk_w *)w;
    int rc = stream_flush(v);

    for (size_t i = 0; rc == 0 && i < v->n_ext; i++) {
        struct vmdk_wext *e = &v->ext[i];

        if (e->flat)
            continue;
        rc = gt_flush(e);
        if (rc == 0 && v->compress && v->written)
            rc = stream_tail(v, e);
    }
    if (rc == 0 && v->written)
        rc = put_desc(v, 1);
    for (size_t i = 0; rc == 0 && i < v->n_ext; i++)
        if (v->ext[i].bd != w->out)
            rc = ins_flush(v->ext[i].bd);
    if (rc == 0)
        rc = ins_flush(w->out);
    if (rc && !w->ctx->errmsg[0])
        ins_error(w->ctx, rc, "%s", ins_strerror(rc));
    return rc;
}

static void vmdk_close(struct ins_wimage *w)
{
    struct vmdk_w *v = (struct vmdk_w *)w;

    if (!v)
        return;
    for (size_t i = 0; v->ext && i < v->n_ext; i++)
        ins_free(w->ctx, v->ext[i].gt);
    ins_free(w->ctx, v->ext);
    ins_free(w->ctx, v->desc);
    ins_free(w->ctx, v->grain);
    ins_free(w->ctx, v->pend);
    ins_free(w->ctx, v);
}

const struct ins_writer ins_wr_vmdk = {
    .name = "vmdk",
    .create = vmdk_create,
    .write = vmdk_write,
    .write_zeroes = vmdk_write_zeroes,
    .compress = vmdk_compress,
    .write_compressed = vmdk_write_compressed,
    .finish = vmdk_finish,
    .close = vmdk_close,
};

/*
 * measure.c - `qemu-img measure` (see measure.h and docs/measure.md).
 *
 * qcow2, raw and luks follow qemu's bdrv_measure implementations
 * (qcow2_measure, raw_measure, block_crypto_measure).  vmdk, vpc, vhdx and
 * vdi have no measure in qemu; for them instar computes a bound that the
 * file qemu-img convert or create would write never exceeds, from the
 * layouts those drivers create.
 */
#include "measure.h"

#include <stdio.h>
#include <string.h>

#include "qcow2.h"

#define KiB (1ull << 10)
#define MiB (1ull << 20)
#define GiB (1ull << 30)
#define TiB (1ull << 40)

/* Callers keep values far below 2^64 (sizes are at most INT64_MAX and
 * every multiplier is small), so plain arithmetic cannot wrap here. */
static uint64_t div_round_up(uint64_t n, uint64_t d)
{
    return n / d + (n % d != 0);
}

static uint64_t round_up(uint64_t n, uint64_t align)
{
    return div_round_up(n, align) * align;
}

static int ctz64(uint64_t v)
{
    return v ? __builtin_ctzll(v) : 64;
}

/* ---- the source ---- */

/* qcow2_get_persistent_dirty_bitmap_size(): every bitmap fully allocated,
 * its table, and its directory entry. */
static uint64_t qcow2_bitmaps_size(const struct qcow2_image *q, uint64_t length,
                                   uint64_t cluster)
{
    uint64_t total = 0, dir = 0;
    uint32_t i;

    if (!q->bitmaps)
        return 0;
    for (i = 0; i < q->nb_bitmaps; i++) {
        const struct qcow2_bitmap *bm = &q->bitmaps[i];
        uint64_t gran = bm->granularity_bits < 64 ? 1ull << bm->granularity_bits : 0;
        uint64_t bits, bytes, clusters;

        if (!gran || !bm->name)
            continue;
        bits = div_round_up(length, gran);
        bytes = div_round_up(bits, 8);
        clusters = div_round_up(bytes, cluster);
        total += clusters * cluster;
        total += round_up(clusters * 8, cluster);
        /* A directory entry: 24 bytes and the name, 8-byte aligned. */
        dir += round_up(24 + strlen(bm->name), 8);
    }
    return total + round_up(dir, cluster);
}

int ins_measure_scan(struct ins_ctx *ctx, struct ins_image *img,
                     uint64_t granularity, uint64_t bitmap_cluster,
                     int parallels_bitmaps, struct ins_measure_source *src)
{
    uint64_t size = img->virtual_size, offset, pnum;

    memset(src, 0, sizeof(*src));
    src->length = size;
    if (size > INT64_MAX)
        return ins_error(ctx, INS_EFBIG, "Unable to get image virtual_size: "
                         "File too large");

    if (img->drv == &ins_drv_qcow2) {
        const struct qcow2_image *q = (const struct qcow2_image *)img;

        src->supports_bitmaps = q->version >= 3;
        if (src->supports_bitmaps && bitmap_cluster)
            src->bitmaps_size = qcow2_bitmaps_size(q, size, bitmap_cluster);
    } else if (img->drv == &ins_drv_parallels && parallels_bitmaps) {
        /* qemu loads parallels bitmaps as non-persistent ones. */
        src->supports_bitmaps = 1;
    }

    if (!granularity)
        return INS_OK;
    /* qcow2_measure()'s walk: runs of data count in whole clusters; zero
     * and unallocated runs cost nothing. */
    for (offset = 0; offset < size; offset += pnum) {
        struct ins_bstat st;
        int ret = ins_status_above(img, offset, size - offset, &st, NULL);

        if (ret < 0) {
            char msg[sizeof(ctx->errmsg)];

            snprintf(msg, sizeof(msg), "%s", ctx->errmsg);
            return ins_error(ctx, ret, "Unable to get block status: %s", msg);
        }
        pnum = st.pnum;
        if (pnum == 0 || pnum > size - offset)
            return ins_error(ctx, INS_EIO, "Unable to get block status: "
                             "Input/output error");
        if (ret & INS_BS_ZERO)
            continue;
        if ((ret & (INS_BS_DATA | INS_BS_ALLOCATED)) ==
            (INS_BS_DATA | INS_BS_ALLOCATED)) {
            pnum = round_up(offset + pnum, granularity) - offset;
            src->data_bytes += offset % granularity + pnum;
        }
    }
    src->scanned = 1;
    return INS_OK;
}

/* ---- qcow2 ---- */

/* qcow2_refcount_metadata_size(): the fixed point where the refcount
 * blocks and table also count themselves. */
static uint64_t qcow2_refcount_size(uint64_t clusters, uint64_t cluster_size,
                                    int refcount_order)
{
    uint64_t per_table = cluster_size / 8;
    uint64_t per_block = cluster_size * 8 >> refcount_order;
    uint64_t table = 0, blocks = 0, n = 0, last;

    do {
        last = n;
        blocks = div_round_up(clusters + table + blocks, per_block);
        table = div_round_up(blocks, per_table);
        n = clusters + blocks + table;
    } while (n != last);
    return (blocks + table) * cluster_size;
}

/* qcow2_calc_prealloc_size(): header, L1, L2 and refcounts of a fully
 * allocated image, plus its data. */
static uint64_t qcow2_prealloc_size(uint64_t total, uint64_t cluster_size,
                                    int refcount_order, int extended_l2)
{
    uint64_t aligned = round_up(total, cluster_size);
    uint64_t l2e = extended_l2 ? 16 : 8;
    uint64_t meta = cluster_size, nl1e, nl2e;

    nl2e = round_up(aligned / cluster_size, cluster_size / l2e);
    meta += nl2e * l2e;
    nl1e = round_up(nl2e * l2e / cluster_size, cluster_size / 8);
    meta += nl1e * 8;
    meta += qcow2_refcount_size((meta + aligned) / cluster_size, cluster_size,
                                refcount_order);
    return meta + aligned;
}

#define QCOW2_MAX_L1_BYTES (32ull * MiB)

static int measure_qcow2(const struct ins_measure_target *t,
                         const struct ins_measure_source *src,
                         struct ins_measure_result *res, char *err,
                         size_t errlen)
{
    uint64_t cs = t->cluster_size, l2e = t->extended_l2 ? 16 : 8;
    uint64_t virtual_size, l2_tables, required = 0, luks_payload = 0;

    if (cs < 512 || cs > 2 * MiB || (cs & (cs - 1)))
        return snprintf(err, errlen, "Invalid cluster size"), INS_EINVAL;
    if (t->luks_header)
        luks_payload = round_up(t->luks_header, cs);

    /* The size check uses the size option even when a source is given. */
    virtual_size = round_up(t->size, cs);
    l2_tables = div_round_up(virtual_size / cs, cs / l2e);
    if (l2_tables > QCOW2_MAX_L1_BYTES / 8) {
        snprintf(err, errlen, "The image size is too large "
                 "(try using a larger cluster size)");
        return INS_EFBIG;
    }

    if (src) {
        virtual_size = round_up(src->length, cs);
        /* With a backing file, assume no cluster is shared with it. */
        required = t->has_backing ? virtual_size : src->data_bytes;
    }
    if (t->prealloc_full)
        required = virtual_size;

    res->fully_allocated = luks_payload +
        qcow2_prealloc_size(virtual_size, cs, ctz64(t->refcount_bits),
                            t->extended_l2);
    /* Unneeded data clusters leave; their metadata stays counted. */
    res->required = res->fully_allocated - virtual_size + required;
    res->has_bitmaps = t->version >= 3 && src && src->supports_bitmaps;
    if (res->has_bitmaps)
        res->bitmaps = src->bitmaps_size;
    return INS_OK;
}

/* ---- LUKS ---- */

uint64_t ins_luks_header_len(uint32_t key_len)
{
    /* 4096 bytes of header, then 8 key slots, each the AF-split master
     * key (4000 stripes) in sectors rounded up to 8 sectors. */
    uint64_t header_sectors = 4096 / 512;
    uint64_t split = round_up(div_round_up((uint64_t)key_len * 4000, 512),
                              header_sectors);

    return (header_sectors + 8 * split) * 512;
}

static void measure_luks(const struct ins_measure_target *t,
                         const struct ins_measure_source *src,
                         struct ins_measure_result *res)
{
    uint64_t size = src ? src->length : t->size;

    /* Every block is encrypted: allocation makes no difference. */
    res->required = t->luks_header + size;
    res->fully_allocated = res->required;
}

/* ---- vdi: header, block map, 1 MiB blocks ---- */

#define VDI_BLOCK (1 * MiB)
#define VDI_BLOCKS_MAX 0x3fffffffull     /* qemu's VDI_BLOCKS_IN_IMAGE_MAX */

static int measure_vdi(const struct ins_measure_target *t,
                       const struct ins_measure_source *src,
                       struct ins_measure_result *res, char *err,
                       size_t errlen)
{
    uint64_t size = round_up(src ? src->length : t->size, 512);
    uint64_t blocks = div_round_up(size, VDI_BLOCK), meta, used;

    if (size > VDI_BLOCKS_MAX * VDI_BLOCK) {
        snprintf(err, errlen, "Unsupported VDI image size (size is 0x%llx, "
                 "max supported is 0x%llx)", (unsigned long long)size,
                 (unsigned long long)(VDI_BLOCKS_MAX * VDI_BLOCK));
        return INS_EFBIG;
    }
    meta = 512 + round_up(blocks * 4, 512);
    used = src ? div_round_up(src->data_bytes, VDI_BLOCK) : 0;
    if (t->vdi_static || (src && t->has_backing))
        used = blocks;
    res->fully_allocated = meta + blocks * VDI_BLOCK;
    res->required = meta + used * VDI_BLOCK;
    return INS_OK;
}

/* ---- vpc: footer copy, dynamic header, BAT, 2 MiB blocks + bitmap ---- */

#define VPC_BLOCK (2 * MiB)
#define VPC_MAX_GEOMETRY (65535ull * 16 * 255)
#define VPC_MAX_SECTORS 0xff000000ull

/* vpc's calculate_geometry(): a CHS geometry for total_sectors. */
static uint64_t vpc_chs_sectors(uint64_t total)
{
    uint64_t cth, heads, secs;

    if (total > VPC_MAX_GEOMETRY)
        total = VPC_MAX_GEOMETRY;
    if (total >= 65535ull * 16 * 63) {
        secs = 255;
        heads = 16;
        cth = total / secs;
    } else {
        secs = 17;
        cth = total / secs;
        heads = div_round_up(cth, 1024);
        if (heads < 4)
            heads = 4;
        if (cth >= heads * 1024 || heads > 16) {
            secs = 31;
            heads = 16;
            cth = total / secs;
        }
        if (cth >= heads * 1024) {
            secs = 63;
            heads = 16;
            cth = total / secs;
        }
    }
    /* qemu keeps cylinders in a uint16_t and cylinders * heads in 32 bits */
    return (uint64_t)(uint16_t)((uint32_t)cth / heads) * heads * secs;
}

/* calculate_rounded_image_size(): the size qemu-img really creates. */
static int vpc_rounded_sectors(uint64_t size, int force, uint64_t *out,
                               char *err, size_t errlen)
{
    uint64_t want = size / 512, chs = 0, i;

    if (force) {
        chs = VPC_MAX_GEOMETRY;
    } else {
        uint64_t target = want < VPC_MAX_GEOMETRY ? want : VPC_MAX_GEOMETRY;

        /* Grow the request until a geometry covers it. */
        for (i = 0; target > chs; i++)
            chs = vpc_chs_sectors(target + i);
    }
    if (chs == VPC_MAX_GEOMETRY) {
        if (want > VPC_MAX_SECTORS) {
            /* qemu-img create reports vpc's EFBIG generically. */
            snprintf(err, errlen, "The image size is too large for file "
                     "format 'vpc'");
            return INS_EFBIG;
        }
        *out = want;
    } else {
        *out = chs;
    }
    return INS_OK;
}

static int measure_vpc(const struct ins_measure_target *t,
                       const struct ins_measure_source *src,
                       struct ins_measure_result *res, char *err,
                       size_t errlen)
{
    uint64_t size = round_up(src ? src->length : t->size, 512);
    uint64_t sectors, bytes, entries, meta, used;
    int rc;

    rc = vpc_rounded_sectors(size, t->vpc_force_size, &sectors, err, errlen);
    if (rc < 0)
        return rc;
    bytes = sectors * 512;
    if (t->vpc_fixed) {
        /* The disk, then the footer. */
        res->fully_allocated = res->required = bytes + 512;
        return INS_OK;
    }
    entries = div_round_up(sectors, VPC_BLOCK / 512);
    /* Footer copy, dynamic header, BAT, and the footer at the end. */
    meta = 1536 + round_up(entries * 4, 512) + 512;
    used = src ? div_round_up(src->data_bytes, VPC_BLOCK) : 0;
    if (src && t->has_backing)
        used = entries;
    if (used > entries)
        used = entries;
    /* Each block carries a 512-byte sector bitmap. */
    res->fully_allocated = meta + entries * (VPC_BLOCK + 512);
    res->required = meta + used * (VPC_BLOCK + 512);
    return INS_OK;
}

/* ---- vhdx: headers, log, BAT, metadata, then whole blocks ---- */

#define VHDX_MAX_SIZE (64ull * TiB)
#define VHDX_MAX_BLOCK (256ull * MiB)

static uint64_t vhdx_default_block(uint64_t size)
{
    if (size > 32 * TiB)
        return 64 * MiB;
    if (size > 100 * GiB)
        return 32 * MiB;
    if (size > 1 * GiB)
        return 16 * MiB;
    return 8 * MiB;
}

/* The block size vhdx_co_create_opts() settles on (0: invalid). */
static uint64_t vhdx_block(const struct ins_measure_target *t, uint64_t size)
{
    uint64_t bs = round_up(t->vhdx_block_size, MiB);

    if (bs == 0)
        return vhdx_default_block(size);
    return bs > VHDX_MAX_BLOCK ? VHDX_MAX_BLOCK : bs;
}

static int measure_vhdx(const struct ins_measure_target *t,
                        const struct ins_measure_source *src,
                        struct ins_measure_result *res, char *err,
                        size_t errlen)
{
    uint64_t size = round_up(src ? src->length : t->size, 512);
    /* vhdx_co_create_opts() rounds the log size up to whole MiB first. */
    uint64_t log = t->vhdx_has_log_size ? round_up(t->vhdx_log_size, MiB) : MiB;
    uint64_t bs = vhdx_block(t, size), chunk_ratio, bat_off, bat_len, data_off;
    uint32_t data_blocks, bat_entries;
    uint64_t used;
    int bits;

    if (size > VHDX_MAX_SIZE) {
        snprintf(err, errlen, "Image size too large; max of 64TB");
        return INS_EFBIG;
    }
    if (log > UINT32_MAX) {
        snprintf(err, errlen, "Log size must be smaller than 4 GB");
        return INS_EINVAL;
    }
    if (log < MiB) {
        snprintf(err, errlen, "Log size must be a multiple of 1 MB");
        return INS_EINVAL;
    }
    if (bs & (bs - 1)) {
        snprintf(err, errlen, "Block size must be a power of two");
        return INS_EINVAL;
    }
    /* vhdx_calc_bat_entries(), in qemu's 32-bit arithmetic: a sector
     * bitmap entry after every chunk_ratio payload entries. */
    chunk_ratio = (1ull << 23) * 512 / bs;
    bits = ctz64(chunk_ratio);
    data_blocks = (uint32_t)div_round_up(size, bs);
    bat_entries = data_blocks + ((uint32_t)(data_blocks - 1) >> bits);
    bat_off = round_up(MiB + log, MiB);
    bat_len = round_up((uint64_t)bat_entries * 8, MiB);
    /* Data starts after the BAT and a 5 MiB gap holding the metadata. */
    data_off = bat_off + bat_len + 5 * MiB;
    used = src ? div_round_up(src->data_bytes, bs) : 0;
    if (src && t->has_backing)
        used = data_blocks;
    if (used > data_blocks)
        used = data_blocks;
    if (t->vhdx_fixed && !t->vhdx_zero_blocks) {
        /* Every block is present from the start. */
        res->fully_allocated = res->required = data_off + size;
        return INS_OK;
    }
    if (t->vhdx_fixed) {
        /* qemu preallocates the blocks but marks them zero (its default
         * block_state_zero=on): a write then appends a new block. */
        data_off = round_up(data_off + size, MiB);
    }
    /* A new block goes at the end of the file, a whole block long. */
    res->fully_allocated = data_off + (uint64_t)data_blocks * bs;
    res->required = data_off + used * bs;
    return INS_OK;
}

/* ---- vmdk ---- */

#define VMDK_GRAIN (64 * KiB)
#define VMDK_SPLIT (2 * GiB)
/* A deflated grain with its 12-byte marker, sector aligned: zlib's
 * compressBound(65536) is 65569 bytes. */
#define VMDK_COMPRESSED_GRAIN round_up(12 + 65536 + 16 + 4 + 13, 512)
/*
 * The descriptor qemu writes: fixed text of about 400 bytes, an extent
 * line per extent holding the extent's path (at most PATH_MAX), and the
 * backing file hint.  Bounded generously since the names are unknown.
 */
#define VMDK_DESC_FIXED 1024
#define VMDK_DESC_PER_EXTENT (4096 + 64)

/* A sparse extent's metadata: header, embedded descriptor area, grain
 * directory and tables twice (vmdk_init_extent()). */
static uint64_t vmdk_sparse_meta(uint64_t bytes)
{
    uint64_t grains = div_round_up(bytes / 512, 128);
    uint64_t gt_count = div_round_up(grains, 512);
    uint64_t gd_sectors = div_round_up(gt_count * 4, 512);
    uint64_t gd_offset = 21 + gd_sectors + 4 * gt_count;

    return round_up(gd_offset + gd_sectors + 4 * gt_count, 128) * 512;
}

static int measure_vmdk(const struct ins_measure_target *t,
                        const struct ins_measure_source *src,
                        struct ins_measure_result *res, char *err,
                        size_t errlen)
{
    uint64_t size = round_up(src ? src->length : t->size, 512);
    int split = t->vmdk_subfmt == INS_VMDK_TWO_GB_SPARSE ||
                t->vmdk_subfmt == INS_VMDK_TWO_GB_FLAT;
    int flat = t->vmdk_subfmt == INS_VMDK_MONOLITHIC_FLAT ||
               t->vmdk_subfmt == INS_VMDK_TWO_GB_FLAT;
    int stream = t->vmdk_subfmt == INS_VMDK_STREAM_OPTIMIZED;
    uint64_t extent = split ? VMDK_SPLIT : size;
    uint64_t n_extents = extent ? div_round_up(size, extent) : 0;
    uint64_t grain_bytes = stream ? VMDK_COMPRESSED_GRAIN : VMDK_GRAIN;
    uint64_t meta = 0, grains = 0, used, off;

    /* qemu keeps grain counts in 32 bits. */
    if (div_round_up(extent, VMDK_GRAIN) > UINT32_MAX / 4) {
        snprintf(err, errlen, "The image size is too large for vmdk");
        return INS_EFBIG;
    }
    if (flat) {
        /* Flat extents are the disk itself, plus a descriptor file. */
        res->fully_allocated = res->required = size + VMDK_DESC_FIXED +
            n_extents * VMDK_DESC_PER_EXTENT;
        return INS_OK;
    }
    if (split)
        meta = VMDK_DESC_FIXED + n_extents * VMDK_DESC_PER_EXTENT;
    for (off = 0; off < size; off += extent) {
        uint64_t len = size - off < extent ? size - off : extent;

        meta += vmdk_sparse_meta(len);
        grains += div_round_up(len, VMDK_GRAIN);
    }
    if (!split && size == 0)
        meta += vmdk_sparse_meta(0);
    if (stream)
        meta += 512;            /* the end-of-stream marker */
    /* A run may start a new grain in each extent it touches. */
    used = src ? div_round_up(src->data_bytes, VMDK_GRAIN) : 0;
    if (src && t->has_backing)
        used = grains;
    if (used > grains)
        used = grains;
    res->fully_allocated = meta + grains * grain_bytes;
    res->required = meta + used * grain_bytes;
    return INS_OK;
}

/* ---- dispatch ---- */

uint64_t ins_measure_granularity(const struct ins_measure_target *t,
                                 uint64_t size)
{
    switch (t->fmt) {
    case INS_MEASURE_QCOW2:
        /* With a backing file qemu does not walk the source. */
        return t->has_backing ? 0 : t->cluster_size;
    case INS_MEASURE_VMDK:
        return VMDK_GRAIN;
    case INS_MEASURE_VPC:
        return t->vpc_fixed ? 0 : VPC_BLOCK;
    case INS_MEASURE_VHDX: {
        uint64_t bs = vhdx_block(t, round_up(size, 512));

        return (t->vhdx_fixed && !t->vhdx_zero_blocks) || (bs & (bs - 1)) ? 0 : bs;
    }
    case INS_MEASURE_VDI:
        return t->vdi_static ? 0 : VDI_BLOCK;
    case INS_MEASURE_RAW:
    case INS_MEASURE_LUKS:
        break;
    }
    return 0;
}

int ins_measure_compute(const struct ins_measure_target *t,
                        const struct ins_measure_source *src,
                        struct ins_measure_result *res, char *err,
                        size_t errlen)
{
    memset(res, 0, sizeof(*res));
    if (errlen)
        err[0] = '\0';
    /* Sizes past INT64_MAX only reach here as -o size next to a source
     * file, which qcow2 checks and the others ignore; qemu's rounding
     * wraps like ours. */
    if (t->fmt >= INS_MEASURE_VMDK && !src && t->size > INT64_MAX) {
        snprintf(err, errlen, "Image size too large");
        return INS_EFBIG;
    }
    switch (t->fmt) {
    case INS_MEASURE_RAW:
        /* An unallocated sector still takes room in a raw file. */
        res->required = src ? src->length : round_up(t->size, 512);
        res->fully_allocated = res->required;
        return INS_OK;
    case INS_MEASURE_QCOW2:
        return measure_qcow2(t, src, res, err, errlen);
    case INS_MEASURE_LUKS:
        measure_luks(t, src, res);
        return INS_OK;
    case INS_MEASURE_VMDK:
        return measure_vmdk(t, src, res, err, errlen);
    case INS_MEASURE_VPC:
        return measure_vpc(t, src, res, err, errlen);
    case INS_MEASURE_VHDX:
        return measure_vhdx(t, src, res, err, errlen);
    case INS_MEASURE_VDI:
        return measure_vdi(t, src, res, err, errlen);
    }
    snprintf(err, errlen, "Unknown target format");
    return INS_EINVAL;
}

/*
 * measure.h - `qemu-img measure`: how large a new image would be.
 *
 * Two halves:
 *   ins_measure_scan()     runs in the worker over an open source image:
 *                          its length, how many target clusters hold data
 *                          (qemu's block-status walk), and the persistent
 *                          dirty bitmaps a qcow2 target would copy
 *   ins_measure_compute()  pure arithmetic from the target's parameters and
 *                          the scan (or a bare --size): qemu's formulas for
 *                          qcow2, raw and luks, and instar's documented upper
 *                          bounds for vmdk, vpc, vhdx and vdi (docs/measure.md)
 */
#ifndef INSTAR_MEASURE_H
#define INSTAR_MEASURE_H

#include "engine.h"

/* ---- the source image (worker side) ---- */

struct ins_measure_source {
    uint64_t length;            /* bdrv_getlength() */
    /* Bytes counted by qemu's walk at the scan granularity: every run
     * that is DATA and ALLOCATED, extended to whole clusters. */
    uint64_t data_bytes;
    int scanned;
    /* The source can hold persistent bitmaps (qcow2 v3; parallels in
     * qemu 10), and the space a qcow2 target needs to copy them. */
    int supports_bitmaps;
    uint64_t bitmaps_size;
};

/*
 * Fills src for img.  When granularity is non-zero the allocation walk
 * runs with that cluster size; bitmaps are sized for bitmap_cluster
 * (0: none).  parallels_bitmaps: the source driver's qemu reports
 * parallels images as bitmap-capable (qemu 9.0 and later).
 */
int ins_measure_scan(struct ins_ctx *ctx, struct ins_image *img,
                     uint64_t granularity, uint64_t bitmap_cluster,
                     int parallels_bitmaps, struct ins_measure_source *src);

/* ---- the target ---- */

enum ins_measure_fmt {
    INS_MEASURE_RAW,
    INS_MEASURE_QCOW2,
    INS_MEASURE_LUKS,
    INS_MEASURE_VMDK,
    INS_MEASURE_VPC,
    INS_MEASURE_VHDX,
    INS_MEASURE_VDI,
};

enum ins_vmdk_subfmt {
    INS_VMDK_MONOLITHIC_SPARSE,
    INS_VMDK_MONOLITHIC_FLAT,
    INS_VMDK_TWO_GB_SPARSE,
    INS_VMDK_TWO_GB_FLAT,
    INS_VMDK_STREAM_OPTIMIZED,
};

struct ins_measure_target {
    enum ins_measure_fmt fmt;
    uint64_t size;              /* -o size / --size; 0 when absent */
    /* qcow2 */
    uint64_t cluster_size;
    uint64_t refcount_bits;
    int version;
    int extended_l2;
    int prealloc_full;          /* preallocation=falloc or full */
    int has_backing;            /* backing_file given: count everything */
    uint64_t luks_header;       /* LUKS header bytes, 0 without LUKS */
    /* vmdk */
    enum ins_vmdk_subfmt vmdk_subfmt;
    /* vpc */
    int vpc_fixed;
    int vpc_force_size;
    /* vhdx */
    uint64_t vhdx_block_size;   /* as given; 0: qemu's default for the size */
    int vhdx_has_log_size;
    uint64_t vhdx_log_size;     /* as given */
    int vhdx_fixed;
    int vhdx_zero_blocks;       /* block_state_zero (qemu's default: on) */
    /* vdi */
    int vdi_static;
};

struct ins_measure_result {
    uint64_t required;
    uint64_t fully_allocated;
    int has_bitmaps;
    uint64_t bitmaps;
};

/*
 * The allocation-walk granularity the target needs from the source
 * (qcow2 cluster, vmdk grain, vpc/vhdx/vdi block), or 0 when the target
 * needs only the length.  size is the virtual size the block size of
 * vhdx is chosen from.
 */
uint64_t ins_measure_granularity(const struct ins_measure_target *t,
                                 uint64_t size);

/*
 * The measurement.  src is NULL with --size.  On failure returns INS_E*
 * with qemu's message in err (e.g. qcow2's "The image size is too large
 * (try using a larger cluster size)").
 */
int ins_measure_compute(const struct ins_measure_target *t,
                        const struct ins_measure_source *src,
                        struct ins_measure_result *res, char *err,
                        size_t errlen);

/* The bytes a LUKS header with a master key of key_len bytes takes
 * before the payload (8 key slots of 4000 stripes, sector aligned). */
uint64_t ins_luks_header_len(uint32_t key_len);

#endif

/*
 * fmt_check.h - the check hooks of the vdi, vpc, vhdx, vmdk, qed and
 * parallels drivers.
 *
 * Each lives in its own <fmt>_check.c and works in two modes:
 *
 *   INS_F_UNSAFE_QUIRKS   exactly qemu's bdrv_co_check for the format
 *                         (same counters, same stderr lines, same errors);
 *                         a format qemu cannot check returns INS_ENOTSUP.
 *   default (safe)        real validation: header checksums, table bounds,
 *                         overlapping and out-of-file allocations, leaks
 *                         where the format has a notion of them.  Lines
 *                         keep qemu's "ERROR ..." style; problems qemu
 *                         also finds keep qemu's wording.
 *
 * Repair (-r): vhdx replays its log at open (vhdx.c) and qed repairs as
 * qemu does; vdi and vmdk answer INS_ENOTSUP as qemu does ("This image
 * format does not support checks"), and so do vpc and parallels (qemu
 * has no vpc check; instar does not repair parallels images).
 */
#ifndef INSTAR_FMT_CHECK_H
#define INSTAR_FMT_CHECK_H

#include "check.h"

int ins_vdi_check(struct ins_image *img, unsigned fix,
                  struct ins_check_result *res);
int ins_vpc_check(struct ins_image *img, unsigned fix,
                  struct ins_check_result *res);
int ins_vhdx_check(struct ins_image *img, unsigned fix,
                   struct ins_check_result *res);
int ins_vmdk_check(struct ins_image *img, unsigned fix,
                   struct ins_check_result *res);
int ins_qed_check(struct ins_image *img, unsigned fix,
                  struct ins_check_result *res);

/* What qed.c parsed at open, for qed_check.c. */
struct qed_layout {
    uint32_t cluster_size, table_size, header_size;    /* sizes in clusters */
    uint64_t features, l1_table_offset, image_size;
    uint64_t file_size;         /* rounded down to a cluster */
};
void ins_qed_layout(const struct ins_image *img, struct qed_layout *l);

int ins_prl_check(struct ins_image *img, unsigned fix,
                  struct ins_check_result *res);

/* What parallels.c parsed at open, for parallels_check.c. */
struct prl_layout {
    uint32_t tracks;            /* sectors per cluster */
    uint32_t off_multiplier;    /* BAT unit in sectors */
    uint32_t bat_size;
};
void ins_prl_layout(const struct ins_image *img, struct prl_layout *l);

/* What vhdx.c parsed at open, for vhdx_check.c. */
struct vhdx_layout {
    uint32_t block_size;
    uint64_t chunk_ratio;       /* payload blocks per sector bitmap block */
    uint32_t bat_entries;
    uint64_t bat_offset, meta_offset, log_offset;
    uint32_t bat_len, log_length;
    int has_parent;
    int log_dirty;              /* safe read-only check: log not replayed */
    int log_replayed;           /* opened for writing: the log was replayed */
};
void ins_vhdx_layout(const struct ins_image *img, struct vhdx_layout *l);

/* vmdk.c's get_cluster_offset() without allocation, for vmdk_check.c:
 * where guest byte `offset` of extent e lives (*cluster_offset, bytes
 * into e->file).  Returns INS_VMDK_* or a negative INS_E*. */
struct vmdk_extent;
enum { INS_VMDK_OK, INS_VMDK_UNALLOC, INS_VMDK_ZEROED, INS_VMDK_ERROR };
int ins_vmdk_get_cluster(struct ins_image *img, struct vmdk_extent *e,
                         uint64_t offset, uint64_t *cluster_offset);

/* Whether the check should mirror qemu-img exactly. */
static inline int ins_check_unsafe(const struct ins_image *img)
{
    return (img->ctx->flags & INS_F_UNSAFE_QUIRKS) != 0;
}

/* Sorts n elements as qsort would, without system calls (fmt_check.c). */
void ins_check_sort(void *base, size_t n, size_t size,
                    int (*cmp)(const void *, const void *));

/*
 * Room for element n of a doubling array capped at max elements: returns
 * the (maybe moved) array with *cap updated, or NULL when the cap is
 * reached or memory ran out (arr is then unchanged and still owned by the
 * caller, who stops collecting).  (fmt_check.c)
 */
void *ins_check_grow(struct ins_ctx *ctx, void *arr, size_t *cap, size_t n,
                     size_t elem, size_t max);

/* A bit set of n bits for "seen" marks; NULL when n is 0 or on failure. */
static inline uint8_t *ins_bitset_new(struct ins_ctx *ctx, uint64_t n)
{
    return n ? ins_calloc(ctx, (size_t)((n + 7) / 8), 1) : NULL;
}
static inline int ins_bitset_test_set(uint8_t *set, uint64_t i)
{
    int was = (set[i / 8] >> (i % 8)) & 1;

    set[i / 8] |= (uint8_t)(1u << (i % 8));
    return was;
}
static inline int ins_bitset_test(const uint8_t *set, uint64_t i)
{
    return (set[i / 8] >> (i % 8)) & 1;
}

#endif

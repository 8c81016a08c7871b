/*
 * convert.h - qemu-img convert's copy loop as a parallel pipeline.
 *
 * The calling thread plans the copy in qemu's order (block status of the
 * sources, split as qemu-img's convert_iteration_sectors() splits it),
 * reader threads read, detect zeros and compress chunks of guest data, and
 * the calling thread hands the results to the format writer strictly in
 * ascending guest offset order (engine/writer.h).
 */
#ifndef INSTAR_CONVERT_H
#define INSTAR_CONVERT_H

#include "writer.h"

/* One input; inputs are concatenated in order. */
struct ins_convert_src {
    struct ins_image *img;      /* open, with its backing chain */
};

struct ins_convert_opts {
    int compressed;             /* -c: write compressed clusters */
    int copy_range;             /* -C: copy offloading (raw to raw) */
    uint64_t min_sparse;        /* -S in 512-byte sectors; 0 = fully allocate */
    int has_zero_init;          /* the target reads as zeros (new, or --target-is-zero) */
    int target_has_backing;     /* -B: leave what the source's top does not
                                   define to the target's backing file */
    int64_t target_backing_sectors; /* its length in sectors, -1 = unknown */
    /* The target's backing image, open (or NULL): a partly written
     * cluster of an overlay gets the rest from it. */
    struct ins_image *target_backing;
    int salvage;                /* --salvage: read errors become zeros */
    int quiet;                  /* -q: no warnings */
    int progress;               /* emit {"progress": float bits} partials */
    int threads;                /* reader threads besides the caller (0..16) */
    /* -l: the snapshot the first source shows (already loaded on it; the
     * reader threads' own handles load it too). */
    const char *sn_id, *sn_name, *sn_id_or_name;
};

/*
 * Copies the concatenated sources into w (already created or opened).
 * Returns INS_OK, or INS_E* with ctx->errmsg (errmsg_plain set: qemu-img
 * prints these without "Could not open").  Warnings (--salvage) are sent
 * as {"warning": "..."} partials.  Does not call w's finish.
 */
int ins_op_convert(struct ins_ctx *ctx, const struct ins_convert_src *src,
                   size_t nsrc, struct ins_wimage *w,
                   const struct ins_convert_opts *opts);

/* True when the len bytes at p are all zero (vectorised). */
int ins_buffer_is_zero(const void *p, size_t len);

#endif

/*
 * writer.h - creating images and writing guest data into them (convert,
 * dd, and later create).
 *
 * A writer lays out a new image on a writable block device exactly as
 * qemu-img would for the same options (so `qemu-img info` shows the same)
 * and then takes guest data.  The convert pipeline (engine/convert.c)
 * reads, detects zeros and compresses on several threads, and calls the
 * writer from one thread at a time, in ascending guest offset order:
 * writers need no locking, and their allocation order is qemu-img's
 * (which without -W also writes in order).  A writer with can_defer may
 * leave its data writes to the caller (struct ins_wimage's defer), who
 * does them on other threads meanwhile.
 */
#ifndef INSTAR_WRITER_H
#define INSTAR_WRITER_H

#include "engine.h"

struct ins_writer;

/* Data writes handed back to the caller instead of done (ins_wdata). */
struct ins_wdefer_item {
    const void *buf;
    size_t len;
    uint64_t off;                   /* in the file */
    uint64_t guest;                 /* the guest offset written (messages) */
};

struct ins_wdefer {
    struct ins_wdefer_item *items;
    size_t n, cap;
    uint64_t guest;                 /* set by the caller before write() */
};

/* Each writer's state begins with this. */
struct ins_wimage {
    const struct ins_writer *wr;
    struct ins_ctx *ctx;
    struct ins_bdev *out;
    uint64_t virtual_size;
    /* Writes are aligned to this (the cluster or grain size; 512 for raw)
     * except where the image ends. */
    uint64_t granularity;
    /* A fresh image reads as zeros everywhere (so convert skips zeros). */
    int zero_init;
    /* The cluster size qemu reports for the image (bdrv_get_info), the
     * unit convert -c compresses in, when it is not the granularity
     * (qcow2 with extended L2 entries writes subclusters); 0 = the
     * granularity. */
    uint64_t cluster_size;
    /* Every write must be compressed (vmdk streamOptimized): convert
     * then compresses as with -c (qemu's needs_compressed_writes). */
    int needs_compressed_writes;
    /*
     * Set by convert around write() for writers with can_defer: the guest
     * data's file writes (ins_wdata) are recorded here, not done; the
     * caller does them (on any thread, ins_wdefer_run) while buf stays
     * valid.  Metadata is always written at once.  NULL: write at once.
     */
    struct ins_wdefer *defer;
};

/* What create() is asked for.  opts holds the -o options the host
 * checked against the format's list: a dict of name -> STR (as written),
 * BOOL (flags) or UINT (numbers and sizes). */
struct ins_create {
    uint64_t size;
    const struct tree *opts;
    const char *backing_file;       /* -B / backing_file, or NULL */
    const char *backing_format;     /* or NULL */
    /* Further files the host created for the image, in order (a vmdk's
     * extent files: the descriptor names them by their bdev name). */
    struct ins_bdev **extra;
    size_t n_extra;
    /*
     * Filled by the caller (the engine makes no system calls): random
     * bytes for UUIDs, GUIDs and vmdk CIDs (getrandom), and the current
     * time (clock_gettime CLOCK_REALTIME) for vpc/vhdx timestamps.
     */
    uint8_t random[128];
    uint64_t now_unix;
};

struct ins_writer {
    const char *name;               /* qemu's format name */
    /* Lays out a new, empty image on out (an empty writable file). */
    int (*create)(struct ins_ctx *ctx, struct ins_bdev *out,
                  const struct ins_create *cr, struct ins_wimage **img);
    /* Optional: opens an existing image for writing (convert -n). */
    int (*open)(struct ins_ctx *ctx, struct ins_bdev *out,
                struct ins_wimage **img);
    /*
     * Guest data [offset, offset + len), granularity-aligned, in
     * ascending order over the whole convert.  Ranges never written read
     * as zeros (or as the backing file's, with one).
     */
    int (*write)(struct ins_wimage *img, const void *buf, size_t len,
                 uint64_t offset);
    /* Optional: explicit zeros over a range (for -n targets and overlays
     * whose backing file has data there).  The range is granularity-
     * aligned, or lies inside one granule that nothing was written to
     * yet; returning INS_ENOTSUP makes the caller write zeros instead
     * (qemu's fallback when a partial granule cannot be zeroed). */
    int (*write_zeroes)(struct ins_wimage *img, uint64_t offset,
                        uint64_t len);
    /*
     * Optional (convert -c): compress one granule of guest data into out
     * (out_cap bytes); thread-safe and pure, so the pipeline runs it on
     * several threads.  Sets *out_len, or returns INS_ENOTSUP/"too big"
     * (INS_EFBIG) when the data should be written uncompressed.  len is
     * the granule's guest bytes: less than a granule only for the image's
     * last, short one, whose buffer is zero-padded to the whole granule.
     */
    int (*compress)(const struct ins_wimage *img, const void *in, size_t len,
                    void *out, size_t out_cap, size_t *out_len);
    /* Writes one granule compressed by compress(). */
    int (*write_compressed)(struct ins_wimage *img, const void *data,
                            size_t len, uint64_t offset);
    /* Writes the final metadata and flushes: the image is complete. */
    int (*finish)(struct ins_wimage *img);
    void (*close)(struct ins_wimage *img);
    /* write() sends guest data through ins_wdata and reads none of it
     * back, so its file writes may be deferred (struct ins_wimage). */
    int can_defer;
};

extern const struct ins_writer ins_wr_raw, ins_wr_qcow2, ins_wr_vmdk,
    ins_wr_vpc, ins_wr_vhdx, ins_wr_vdi;

/* The writer for a format name, or NULL. */
const struct ins_writer *ins_find_writer(const char *name);

/*
 * Grows an empty file to size as qemu's file driver does (preallocation
 * off): truncate, then zeros over the first block (4 KiB, or a sector of a
 * smaller file) so that later alignment probing finds it allocated.  The
 * file's layout shows it (qemu-img map, disk size), so writers of files
 * qemu creates this way (raw, fixed vpc, flat vmdk extents) do the same.
 */
int ins_grow_empty(struct ins_bdev *bd, uint64_t size);

/* A writer's write of guest data to its file: done at once, or recorded
 * in img->defer when the caller asked for that. */
int ins_wdata(struct ins_wimage *img, const void *buf, size_t len,
              uint64_t off);

/* Does d's writes (thread-safe: the file's size is left alone and the end
 * of the last byte written goes to *end).  On failure returns INS_E* with
 * the failed item's index in *failed. */
int ins_wdefer_run(struct ins_wimage *img, const struct ins_wdefer *d,
                   uint64_t *end, size_t *failed);

#endif

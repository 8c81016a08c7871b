/*
 * inspect.h - the upload safety gate: what an image is and whether it is
 * safe to hand to qemu-img and a hypervisor (`instar inspect`).
 *
 * Inspection opens nothing but the one file: references an image makes
 * (backing files, data files, vmdk extents, VHD/VHDX parents) are
 * findings, never files to open.  Checks and their names are listed in
 * docs/inspect.md; where OpenStack's format_inspector has the same check,
 * the verdict is the same.
 */
#ifndef INSTAR_INSPECT_H
#define INSTAR_INSPECT_H

#include "engine.h"

/* Defaults of the options below. */
#define INS_INSPECT_MAX_VSIZE     (16ull << 40)     /* 16 TiB */
#define INS_INSPECT_VMDK_TYPES    "monolithicSparse,streamOptimized"
/* Deflate cannot expand a stream more than about 1032:1: guest data
 * held in compressed clusters beyond this multiple of the file's length
 * means clusters are shared (a decompression bomb). */
#define INS_INSPECT_MAX_RATIO     1032u

/* A stream source has read and keeps at least this much of its start
 * before inspection begins (or all of a shorter input). */
#define INS_INSPECT_STREAM_HEAD   (1u << 20)

struct ins_inspect_opts {
    const char *expected_format;    /* NULL, or the format the caller expects */
    uint64_t max_virtual_size;      /* 0: no limit */
    const char *vmdk_types;         /* comma-separated createType allow-list */
    uint64_t max_ratio;             /* 0: no compression ratio check */
    /*
     * Set for a forward-only source (an upload on standard input): the
     * file's size is not known until need_end() has read to the end (it
     * keeps the last bytes).  Checks that need the end call it; others
     * decide from the start of the stream alone.
     */
    int stream;
    int (*need_end)(void *opaque);
    void *opaque;
};

/*
 * Inspects `file` and builds the verdict:
 *   {"format": str (absent: none recognised), "formats": [str...],
 *    "virtual-size": uint (absent: unknown), "encrypted": bool,
 *    "safe": bool, "failures": [{"check": str, "message": str}...]}
 * Returns INS_E* with ctx->errmsg only when the file cannot be read.
 */
int ins_op_inspect(struct ins_ctx *ctx, struct ins_bdev *file,
                   const struct ins_inspect_opts *opts,
                   struct tree_builder *tb, struct tree **out);

/* Adds a failure to a verdict tree built by ins_op_inspect (for checks
 * the caller makes, such as the stream's retention limit). */
void ins_inspect_add_failure(struct tree_builder *tb, struct tree *verdict,
                             const char *check, const char *message);

#endif

/*
 * engine.h - the engine's whole view of the world.
 *
 * The engine holds the format drivers and the operations built on them.
 * It is freestanding in spirit: it reaches image bytes only through
 * struct ins_bdev, allocates only through struct ins_alloc (via the
 * ins_malloc family below), asks for files named inside an image only
 * through ctx->open_ref, and makes no system calls of its own.  That keeps
 * it fuzzable and lets the worker run it inside a seccomp sandbox.
 *
 * Every number read from an image is untrusted: use the checked
 * arithmetic helpers below and bound every size before allocating.
 */
#ifndef INSTAR_ENGINE_H
#define INSTAR_ENGINE_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include "../common/tree.h"

/* Return codes.  Zero is success; errors are negative. */
enum {
    INS_OK = 0,
    INS_EIO = -1,       /* read failed, or short read inside the file */
    INS_EINVAL = -2,    /* the image is malformed */
    INS_ENOMEM = -3,    /* allocation failed or a limit was hit */
    INS_ENOTSUP = -4,   /* a valid image using something we do not handle */
    INS_EREFUSED = -5,  /* the host's path policy refused a reference */
    INS_ENOENT = -6,    /* a referenced file does not exist */
    INS_EFBIG = -7,     /* a size is beyond what the format or we allow */
    INS_EBUSY = -8,     /* qemu's EBUSY (a check that gives up) */
    INS_ELAST = INS_EBUSY,  /* the lowest code: the host bounds codes by it */
};

/* ---- block device ---- */

struct ins_bdev {
    void *opaque;
    /*
     * Reads up to len bytes at offset.  Returns the number of bytes read,
     * which is less than len only at end of file, or a negative INS_E*.
     */
    int64_t (*pread)(void *opaque, void *buf, size_t len, uint64_t offset);
    uint64_t size;          /* length of the file in bytes */
    uint64_t allocated;     /* bytes the filesystem allocated (st_blocks*512) */
    const char *name;       /* the name it was opened by (for info output) */
    /*
     * Optional: finds the next data (hole == 0) or hole (hole == 1) at or
     * after offset, as lseek(SEEK_DATA/SEEK_HOLE).  Returns 0 with *out
     * set, INS_ENOENT when there is no more data, or another INS_E*.
     * NULL when the file cannot tell (treat everything as data).
     */
    int (*seek)(void *opaque, uint64_t offset, int hole, uint64_t *out);
    /*
     * Optional: copies up to len bytes at offset to dst at dst_offset in
     * the kernel (copy_file_range), without passing through memory.
     * Returns the bytes copied (0 at end of file), or INS_ENOTSUP when
     * these two devices cannot (dst of another kind, another file
     * system), or another INS_E*.  Does not update dst's size.
     */
    int64_t (*copy)(void *opaque, struct ins_bdev *dst, uint64_t offset,
                    uint64_t dst_offset, size_t len);
    /*
     * Optional: makes len bytes at offset (wholly inside the file) readable
     * in place, without copying them (mmap): returns INS_OK with *out
     * pointing at them, or INS_ENOTSUP (the caller reads them instead).
     * The bytes stay readable until unview(*out, len, offset), which may
     * be called from any thread and after the device is gone.  Never for
     * writing.  The worker ends with an I/O error if the file shrinks
     * under a view.
     */
    int (*view)(void *opaque, uint64_t offset, size_t len, const void **out);
    void (*unview)(const void *addr, size_t len, uint64_t offset);
    /* The last data region seek() found, [bsc_start, bsc_end) (empty when
     * equal): qemu's block-status cache, kept by ins_file_status. */
    uint64_t bsc_start, bsc_end;

    /*
     * The write side, NULL on a read-only device (the host decides: it
     * hands the worker a writable descriptor only for an image the
     * command may change, or a target it created).  Call through the
     * ins_write family below, which keeps `size` up to date.  pread and
     * pwrite may be called from several threads at once.
     *
     * pwrite writes len bytes at offset: returns len or a negative INS_E*.
     * flush makes everything written so far durable (fdatasync).
     * truncate sets the file's length.
     * punch (optional) deallocates [offset, offset + len) so that it reads
     * as zeros, as fallocate(PUNCH_HOLE); INS_ENOTSUP when it cannot.
     */
    int64_t (*pwrite)(void *opaque, const void *buf, size_t len,
                      uint64_t offset);
    int (*flush)(void *opaque);
    int (*truncate)(void *opaque, uint64_t size);
    int (*punch)(void *opaque, uint64_t offset, uint64_t len);
};

/* Exactly len bytes at offset; INS_EIO if the file ends first. */
int ins_read(struct ins_bdev *bd, void *buf, size_t len, uint64_t offset);
/* len bytes at offset; whatever lies past end of file reads as zeros. */
int ins_read_zfill(struct ins_bdev *bd, void *buf, size_t len,
                   uint64_t offset);

/* Exactly len bytes at offset (the file grows as needed); INS_EIO on a
 * short write, INS_ENOTSUP on a read-only device. */
int ins_write(struct ins_bdev *bd, const void *buf, size_t len,
              uint64_t offset);
/* Durability barrier: what was written before is on disk before anything
 * written after.  Metadata updates are ordered with it. */
int ins_flush(struct ins_bdev *bd);
int ins_truncate(struct ins_bdev *bd, uint64_t size);
/* Makes [offset, offset + len) read as zeros: punches a hole where the
 * device can, else writes zeros (never past the end of the file). */
int ins_zero_range(struct ins_bdev *bd, uint64_t offset, uint64_t len);
static inline int ins_writable(const struct ins_bdev *bd)
{
    return bd->pwrite != NULL;
}

/* ---- context ---- */

enum ins_ref_kind {
    INS_REF_BACKING,    /* qcow2/qed/qcow/vmdk/vhdx backing file */
    INS_REF_DATA_FILE,  /* qcow2 external data file */
    INS_REF_EXTENT,     /* vmdk extent named in a descriptor */
    INS_REF_PARENT,     /* vhd/vhdx parent locator */
};

/* Flags in ctx->flags. */
#define INS_F_UNSAFE_QUIRKS  0x01   /* qemu-img's unsafe behaviour (raw fallback, iso as raw) */
#define INS_F_IGNORE_QUIRKS  0x02   /* intuitive output instead of qemu-img's safe quirks */
#define INS_F_EXTRA_DETAIL   0x04   /* extra format-specific detail qemu-img omits */
/* The qemu-img version instar stands in for, as major * 100 + minor, rides
 * in the high bits (some formats' rules changed between versions); 0 means
 * the newest. */
#define INS_F_QEMU_SHIFT     16
#define INS_QEMU_VERSION(ctx) ((ctx)->flags >> INS_F_QEMU_SHIFT)

struct ins_ctx {
    struct ins_alloc *alloc;
    unsigned flags;
    /*
     * Opens a file named inside an image.  kind says what the reference is;
     * base is the name of the image holding it (relative names resolve
     * against its directory); name is exactly as stored in the image.
     * The host applies its path policy: on refusal this returns
     * INS_EREFUSED and leaves a message in ctx->errmsg.  The returned bdev
     * lives until close_ref or the end of the worker.
     */
    int (*open_ref)(struct ins_ctx *ctx, enum ins_ref_kind kind,
                    const char *base, const char *name,
                    struct ins_bdev **out);
    void *ref_opaque;
    /*
     * Sends part of a result ahead of the end (map entries, progress), so
     * that output streams and memory stays bounded.  NULL when the caller
     * wants no partial results.
     */
    int (*emit)(struct ins_ctx *ctx, const struct tree *part);
    /* A one-line error message (qemu-img's wording where qemu-img fails). */
    char errmsg[1024];
    /* Set when errmsg is complete as it stands: the host prints it after
     * the program name, without "Could not open 'FILE': ". */
    int errmsg_plain;
};

/* Sets ctx->errmsg printf-style; returns err so callers can write
 * `return ins_error(ctx, INS_EINVAL, "...")`. */
int ins_error(struct ins_ctx *ctx, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* The same for a message qemu-img prints without "Could not open 'F': "
 * (for example "Can't get image size 'F': File too large"). */
int ins_error_plain(struct ins_ctx *ctx, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* qemu's strerror() wording for an INS_E* code ("Invalid argument", ...). */
const char *ins_strerror(int err);

void *ins_malloc(struct ins_ctx *ctx, size_t size);
/* Zeroed n * size bytes; NULL on overflow or failure. */
void *ins_calloc(struct ins_ctx *ctx, size_t n, size_t size);
void *ins_realloc(struct ins_ctx *ctx, void *ptr, size_t size);
void ins_free(struct ins_ctx *ctx, void *ptr);
char *ins_strdup(struct ins_ctx *ctx, const char *s);
char *ins_strndup(struct ins_ctx *ctx, const char *s, size_t n);

/* ---- checked arithmetic and byte order ---- */

static inline int ins_add_overflow(uint64_t a, uint64_t b, uint64_t *r)
{
    return __builtin_add_overflow(a, b, r);
}

static inline int ins_mul_overflow(uint64_t a, uint64_t b, uint64_t *r)
{
    return __builtin_mul_overflow(a, b, r);
}

static inline uint16_t ins_be16(const uint8_t *p)
{
    return (uint16_t)(p[0] << 8 | p[1]);
}
static inline uint32_t ins_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 |
           (uint32_t)p[2] << 8 | p[3];
}
static inline uint64_t ins_be64(const uint8_t *p)
{
    return (uint64_t)ins_be32(p) << 32 | ins_be32(p + 4);
}
static inline uint16_t ins_le16(const uint8_t *p)
{
    return (uint16_t)(p[0] | p[1] << 8);
}
static inline uint32_t ins_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
           (uint32_t)p[3] << 24;
}
static inline uint64_t ins_le64(const uint8_t *p)
{
    return (uint64_t)ins_le32(p) | (uint64_t)ins_le32(p + 4) << 32;
}

/* ---- what info reports about one image ---- */

struct ins_snapshot {
    char *id;
    char *name;
    uint64_t vm_state_size;
    uint32_t date_sec;
    uint32_t date_nsec;
    uint64_t vm_clock_nsec;
    int has_icount;
    uint64_t icount;
};

/* A file node under the format node (qemu 8.0+ "Child node '/NAME'"). */
struct ins_child {
    char *name;                 /* "file", "data-file", "extents.0", ... */
    struct ins_bdev *bdev;
};

/* Enough for a 2 TB twoGbMaxExtent vmdk (1000 extent files). */
#define INS_MAX_CHILDREN 1100

struct ins_info {
    uint64_t virtual_size;
    int has_cluster_size;
    int64_t cluster_size;
    int encrypted;
    int has_dirty_flag;
    int dirty_flag;
    /* actual-size: sum of the children's allocated bytes unless set here. */
    int has_actual_size;
    int64_t actual_size;
    char *backing_filename;     /* as stored in the image, or NULL */
    char *backing_format;       /* or NULL */
    int has_snapshots;
    struct ins_snapshot *snapshots;
    size_t n_snapshots;
    /* ImageInfoSpecific: {"type": format_specific_type, "data": ...}. */
    const char *format_specific_type;
    struct tree *format_specific;   /* the "data" dict, or NULL */
    /* Children in attachment order; the first is normally "file". */
    struct ins_child children[INS_MAX_CHILDREN];
    size_t n_children;
};

/* ---- format drivers ---- */

struct ins_driver;

/* qemu's BdrvCheckResult (with its BlockFragInfo), see engine/check.h. */
struct ins_check_result {
    int64_t corruptions;
    int64_t leaks;
    int64_t check_errors;
    int64_t corruptions_fixed;
    int64_t leaks_fixed;
    int64_t image_end_offset;
    int64_t total_clusters;
    int64_t allocated_clusters;
    int64_t fragmented_clusters;
    int64_t compressed_clusters;
};
#define INS_CHECK_FIX_LEAKS   0x01  /* -r leaks (qemu's BDRV_FIX_LEAKS) */
#define INS_CHECK_FIX_ERRORS  0x02  /* -r all adds this (BDRV_FIX_ERRORS) */

/* Each driver's image state begins with this. */
struct ins_image {
    const struct ins_driver *drv;
    struct ins_ctx *ctx;
    struct ins_bdev *file;
    uint64_t virtual_size;          /* set by the driver's open */
    /* Set by the read layer (read.c), not by drivers: */
    struct ins_image *backing;      /* opened backing image, or NULL */
};

/* ---- reading guest content ---- */

/*
 * Block status bits, the same as qemu's BDRV_BLOCK_* so that map and
 * compare can reproduce qemu-img exactly:
 *   DATA          reads come from the file at map (maybe zeros anyway)
 *   ZERO          reads as zeros
 *   OFFSET_VALID  map and file are valid
 *   RAW           (drivers only) ask the file's own status at map
 *   ALLOCATED     this layer defines the content (set by the read layer)
 *   EOF           the run reaches the end of the image
 *   RECURSE       (drivers only) DATA whose zeroness the file can tell
 *   COMPRESSED    the run is a compressed cluster
 */
#define INS_BS_DATA         0x01
#define INS_BS_ZERO         0x02
#define INS_BS_OFFSET_VALID 0x04
#define INS_BS_RAW          0x08
#define INS_BS_ALLOCATED    0x10
#define INS_BS_EOF          0x20
#define INS_BS_RECURSE      0x40
#define INS_BS_COMPRESSED   0x80

/* The answer of a block status query. */
struct ins_bstat {
    uint64_t pnum;              /* bytes from the queried offset */
    uint64_t map;               /* host offset, with OFFSET_VALID */
    struct ins_bdev *file;      /* file holding map, with OFFSET_VALID */
};

/* Open flags. */
#define INS_O_READ     0x02     /* opened to read guest data, not only for info */
#define INS_O_WRITE    0x04     /* the image may be changed (check -r, ...):
                                   its file is writable */
#define INS_O_CHECK    0x08     /* opened for check: tolerate what check
                                   reports (qemu's BDRV_O_CHECK) */

struct ins_driver {
    const char *name;           /* qemu's format name: "qcow2", "vpc", ... */
    /*
     * Score how well the content matches (0 = not this format, 100 =
     * certain), as qemu's probes do.  head holds the first head_len bytes
     * of the file (up to INS_PROBE_LEN); a probe may read more from file.
     * Must not fail on any input.
     */
    int (*probe)(struct ins_ctx *ctx, struct ins_bdev *file,
                 const uint8_t *head, size_t head_len);
    /*
     * Parses and validates the image.  On failure returns INS_E* with a
     * message in ctx->errmsg (qemu's wording, without the
     * "Could not open 'FILE': " prefix), and frees everything.
     * tb allocates the format-specific tree that info() will fill.
     */
    int (*open)(struct ins_ctx *ctx, struct ins_bdev *file, unsigned flags,
                struct ins_image **out);
    /* Fills info; the tree builder is for info->format_specific. */
    int (*info)(struct ins_image *img, struct tree_builder *tb,
                struct ins_info *info);
    void (*close)(struct ins_image *img);
    /*
     * The read layer (optional until a driver supports reading).
     *
     * block_status is qemu's bdrv_co_block_status for this layer alone:
     * for guest bytes [offset, offset + bytes) (offset < virtual size,
     * bytes > 0) it fills st->pnum (1 .. bytes, or more: the read layer
     * clamps) with the length of the run that shares one status and
     * returns INS_BS_* flags (DATA, ZERO, OFFSET_VALID with st->map and
     * st->file, RAW, RECURSE, COMPRESSED), or a negative INS_E*.  Neither
     * DATA nor ZERO means "not in this layer": the backing image decides.
     *
     * read fills buf with guest bytes of a range that block_status
     * reported as DATA in this layer (never a range it left to the
     * backing image, never past the virtual size).
     *
     * backing returns the stored backing reference (name and declared
     * format, either may be NULL) for the read layer to open.
     * supports_backing: unallocated ranges are the backing file's (qemu's
     * flag of the same name); without a backing image they read as zeros.
     */
    int (*block_status)(struct ins_image *img, uint64_t offset,
                        uint64_t bytes, struct ins_bstat *st);
    int (*read)(struct ins_image *img, void *buf, size_t len,
                uint64_t offset);
    int (*backing)(struct ins_image *img, const char **name,
                   const char **format);
    int supports_backing;
    /* A DATA run at a valid offset (OFFSET_VALID, not COMPRESSED) holds the
     * guest bytes unchanged in st->file at st->map: read copies them as
     * they are.  Lets convert look at such runs in place (ins_image_locate). */
    int plain_map;
    /*
     * Optional, for drivers whose block status does not give offsets:
     * for a DATA run of this layer, fills st->pnum (1 .. bytes) and
     * returns 1 with st->file and st->map when those bytes are stored
     * there unchanged, 2 when they read as zeros, 0 when they must be
     * read, or INS_E*.
     */
    int (*locate)(struct ins_image *img, uint64_t offset, uint64_t bytes,
                  struct ins_bstat *st);
    /* What kind of reference backing() returns, for ctx->open_ref and the
     * host's messages (zero, the default, is INS_REF_BACKING; vpc's parent
     * locator is INS_REF_PARENT). */
    enum ins_ref_kind backing_ref_kind;
    /*
     * Optional: qemu's bdrv_snapshot_load_tmp for this format.  Switches
     * the image's view to the internal snapshot matching id and/or name
     * (whichever is not NULL; both must match when both are given) until
     * close.  Returns INS_OK, or INS_ENOENT "Can't find snapshot",
     * INS_EINVAL, INS_EFBIG... with qemu's message in ctx->errmsg (the
     * caller adds "Failed to load snapshot: ").  Formats without it
     * cannot load snapshots.  Call through ins_image_load_snapshot.
     */
    int (*load_snapshot)(struct ins_image *img, const char *id,
                         const char *name);
    /*
     * Optional: qemu's bdrv_check for this format (engine/check.c calls
     * it through ins_op_check).  fix is INS_CHECK_FIX_* (the image was
     * opened with INS_O_WRITE when non-zero).  Fills res; lines qemu
     * prints to stderr go through ins_check_msg.  Returns INS_OK, or
     * INS_E* with ctx->errmsg when the check could not run at all.
     */
    int (*check)(struct ins_image *img, unsigned fix,
                 struct ins_check_result *res);
};

#define INS_PROBE_LEN 2048

extern const struct ins_driver ins_drv_raw, ins_drv_qcow2, ins_drv_qcow,
    ins_drv_qed, ins_drv_vmdk, ins_drv_vpc, ins_drv_vhdx, ins_drv_vdi,
    ins_drv_luks, ins_drv_parallels, ins_drv_bochs, ins_drv_cloop,
    ins_drv_dmg, ins_drv_iso;

/* All drivers, in qemu's probe order; NULL-terminated. */
extern const struct ins_driver *const ins_drivers[];

const struct ins_driver *ins_find_driver(const char *name);

/* ---- detection ---- */

struct ins_detect {
    const struct ins_driver *drv;   /* the winner, or NULL: not recognised */
    int score;
    /* Every driver that scored above zero (polyglots have several). */
    const struct ins_driver *matches[16];
    size_t n_matches;
    int has_partition_table;        /* valid MBR or GPT seen (for raw) */
};

/*
 * Probes every driver.  Without INS_F_UNSAFE_QUIRKS a file no driver
 * recognises is raw only if it carries a valid MBR or GPT; otherwise
 * det->drv is NULL.  With it, the answer is qemu-img's (raw fallback,
 * iso reported as raw).
 */
int ins_detect(struct ins_ctx *ctx, struct ins_bdev *file,
               struct ins_detect *det);

/* MBR / GPT validity, shared by detection and the raw driver. */
int ins_has_partition_table(struct ins_bdev *file, const uint8_t *head,
                            size_t head_len);

/* ---- operations ---- */

/*
 * info: opens `file` (named `filename` on the command line) with `drv`
 * and builds qemu's ImageInfo (8.0+ layout, with "children") as a tree.
 * On error returns INS_E* with ctx->errmsg set.
 */
int ins_op_info(struct ins_ctx *ctx, struct ins_bdev *file,
                const char *filename, const struct ins_driver *drv,
                unsigned open_flags, struct tree_builder *tb,
                struct tree **out);

/*
 * Chooses the driver for bd: `format` when given (a format `declared` by
 * another image may not make unknown bytes raw), else detection with the
 * safe rules above.
 */
int ins_select_driver(struct ins_ctx *ctx, struct ins_bdev *bd,
                      const char *format, int declared,
                      const struct ins_driver **drv);

/*
 * Opens an image for reading; with open_backing, its backing chain too
 * (each file through ctx->open_ref).  Close with ins_image_close.
 */
int ins_image_open(struct ins_ctx *ctx, struct ins_bdev *file,
                   const struct ins_driver *drv, unsigned flags,
                   int open_backing, struct ins_image **out);
void ins_image_close(struct ins_image *img);

/*
 * A driver's read hook for the common case: every DATA (or RAW) run that
 * block_status reports lives in st->file at st->map; anything else reads
 * as zeros.
 */
int ins_read_mapped(struct ins_image *img, void *buf, size_t len,
                    uint64_t offset);

/*
 * qemu's bdrv_snapshot_load_tmp(): the image's view becomes its internal
 * snapshot with this id and/or name (the backing chain is unchanged).
 * On error returns INS_E* with qemu's message in ctx->errmsg (without
 * qemu-img's "Failed to load snapshot: ").  (engine/snapshot.c)
 */
int ins_image_load_snapshot(struct ins_image *img, const char *id,
                            const char *name);
/* bdrv_snapshot_load_tmp_by_id_or_name(): by id, then by name. */
int ins_image_load_snapshot_by_id_or_name(struct ins_image *img,
                                          const char *id_or_name);

/* Guest bytes through the chain; unallocated ranges read as zeros. */
int ins_image_read(struct ins_image *img, void *buf, size_t len,
                   uint64_t offset);

/*
 * Where guest bytes [offset, offset + bytes) lie unchanged in a file.
 * Returns 1 with *file and *map when the layer defining the first run
 * stores it as plain bytes (a DATA run of a plain_map driver, wholly inside
 * its file), 2 when the run reads as zeros, 0 when it must be read through
 * ins_image_read, or INS_E*; *pnum is the run's length (up to bytes).
 */
int ins_image_locate(struct ins_image *img, uint64_t offset, uint64_t bytes,
                     struct ins_bdev **file, uint64_t *map, uint64_t *pnum);

/* qemu's bdrv_block_status() for one layer: the driver's answer with the
 * file's status folded in, ALLOCATED and EOF set.  Returns flags or INS_E*. */
int ins_node_status(struct ins_image *img, uint64_t offset, uint64_t bytes,
                    struct ins_bstat *st);

/* qemu's bdrv_block_status_above(img, NULL): through the whole chain;
 * *depth (may be NULL) counts the layers asked. */
int ins_status_above(struct ins_image *img, uint64_t offset, uint64_t bytes,
                     struct ins_bstat *st, int *depth);

/* qemu's file-posix status of a file: DATA or ZERO (holes, and the tail
 * past end of file up to the sector-rounded length), OFFSET_VALID. */
int ins_file_status(struct ins_bdev *bd, uint64_t offset, uint64_t bytes,
                    struct ins_bstat *st);

/* A file's length as qemu's file node reports it: rounded up to 512. */
uint64_t ins_file_length(const struct ins_bdev *bd);

/*
 * map: qemu-img map's entries for guest bytes [start, start + max_length)
 * (max_length < 0: to the end), sent through ctx->emit in batches:
 * {"files": [names...], "records": blob} where the blob holds
 * MAP_RECORD_SIZE-byte records, little-endian: u64 start, u64 length,
 * i64 depth, u64 offset, i64 file index (-1: none), u8 flags (MAPF_*).  human applies qemu's human-format rules
 * (only data entries, compressed clusters are an error);
 * with_compressed makes compression part of merging (qemu 8.0 and later).
 */
int ins_op_map(struct ins_ctx *ctx, struct ins_image *img, uint64_t start,
               int64_t max_length, int human, int with_compressed);

#define MAP_RECORD_SIZE 41
#define MAPF_PRESENT    0x01
#define MAPF_ZERO       0x02
#define MAPF_DATA       0x04
#define MAPF_COMPRESSED 0x08
#define MAPF_HAS_OFFSET 0x10

/*
 * compare: qemu-img compare of two open images.  Fills *out_text (stdout:
 * the verdict lines, and qemu's progress meter with show_progress; the
 * caller frees) and returns qemu-img's exit status (0 same, 1 different,
 * 3 allocation error, 4 read error), or a negative INS_E*.  On status 3
 * and 4 ctx->errmsg holds the error line.
 */
int ins_op_compare(struct ins_ctx *ctx, struct ins_image *img1,
                   const char *name1, struct ins_image *img2,
                   const char *name2, int strict, int show_progress,
                   char **out_text);

/* qemu's path_combine(): resolve name relative to base's directory. */
char *ins_path_combine(struct ins_ctx *ctx, const char *base,
                       const char *name);

#endif

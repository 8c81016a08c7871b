/*
 * qcow2.h - the qcow2 on-disk layout and the driver's parsed state, shared
 * by the info driver (qcow2.c) and code that reads or checks qcow2 images.
 *
 * Field meanings follow qemu's docs/interop/qcow2.txt.  Every value in
 * struct qcow2_image has passed the same validation qemu's qcow2_do_open()
 * applies, so users may rely on the invariants noted below.
 */
#ifndef INSTAR_QCOW2_H
#define INSTAR_QCOW2_H

#include "engine.h"

#define QCOW2_MAGIC             0x514649fbu     /* "QFI\xfb" */
#define QCOW2_HEADER_SIZE       112             /* v3 header with compression type */
#define QCOW2_V2_HEADER_LENGTH  72
#define QCOW2_V3_MIN_HEADER     104

#define QCOW2_MIN_CLUSTER_BITS  9
#define QCOW2_MAX_CLUSTER_BITS  21

/* Incompatible feature bits. */
#define QCOW2_INCOMPAT_DIRTY        (1ull << 0)
#define QCOW2_INCOMPAT_CORRUPT      (1ull << 1)
#define QCOW2_INCOMPAT_DATA_FILE    (1ull << 2)
#define QCOW2_INCOMPAT_COMPRESSION  (1ull << 3)
#define QCOW2_INCOMPAT_EXTL2        (1ull << 4)
#define QCOW2_INCOMPAT_MASK         0x1full

/* Compatible and autoclear feature bits. */
#define QCOW2_COMPAT_LAZY_REFCOUNTS (1ull << 0)
#define QCOW2_AUTOCLEAR_BITMAPS     (1ull << 0)
#define QCOW2_AUTOCLEAR_DATA_FILE_RAW (1ull << 1)

#define QCOW2_CRYPT_NONE    0
#define QCOW2_CRYPT_AES     1
#define QCOW2_CRYPT_LUKS    2

#define QCOW2_COMPRESSION_ZLIB  0
#define QCOW2_COMPRESSION_ZSTD  1

/* Header extension magics. */
#define QCOW2_EXT_END           0x00000000u
#define QCOW2_EXT_BACKING_FMT   0xe2792acau
#define QCOW2_EXT_FEATURE_TABLE 0x6803f857u
#define QCOW2_EXT_CRYPTO_HEADER 0x0537be77u
#define QCOW2_EXT_BITMAPS       0x23852875u
#define QCOW2_EXT_DATA_FILE     0x44415441u

/* qemu's limits (block/qcow2.h). */
#define QCOW2_MAX_REFTABLE_SIZE         (8ull << 20)
#define QCOW2_MAX_L1_SIZE               (32ull << 20)
#define QCOW2_MAX_SNAPSHOTS             65536u
#define QCOW2_SNAPSHOT_HEADER_SIZE      40u
#define QCOW2_MAX_SNAPSHOT_EXTRA_DATA   1024u
#define QCOW2_MAX_SNAPSHOTS_SIZE        (1024ull * QCOW2_MAX_SNAPSHOTS)
#define QCOW2_MAX_BITMAPS               65535u
#define QCOW2_MAX_BITMAP_DIRECTORY_SIZE (1024ull * QCOW2_MAX_BITMAPS)
#define QCOW2_BACKING_NAME_MAX          1023u

/* L1/L2 entries (for the read and check code). */
#define QCOW2_OFLAG_COPIED      (1ull << 63)
#define QCOW2_OFLAG_COMPRESSED  (1ull << 62)
#define QCOW2_OFLAG_ZERO        (1ull << 0)
#define QCOW2_L1E_OFFSET_MASK   0x00fffffffffffe00ull
#define QCOW2_L2E_OFFSET_MASK   0x00fffffffffffe00ull

/* Where one snapshot's L1 table and id/name strings lie in the file, for
 * loading its view (qcow2_load_snapshot).  The strings are compared in
 * full as qemu does, so they are re-read rather than kept: a fixed 32
 * bytes per snapshot. */
struct qcow2_snapshot_loc {
    uint64_t l1_table_offset;       /* unchecked until loaded */
    uint64_t id_offset;
    uint64_t name_offset;
    uint32_t l1_size;               /* unchecked until loaded */
    uint16_t id_size;
    uint16_t name_size;
};

/* One bitmap directory entry, as reported by info. */
struct qcow2_bitmap {
    char *name;
    uint32_t flags;                 /* bit 0 in-use, bit 1 auto */
    uint32_t granularity_bits;      /* 9..31 */
    uint64_t table_offset;          /* cluster aligned, non-zero */
    uint32_t table_size;            /* entries */
};

struct qcow2_image {
    struct ins_image base;          /* must be first */

    uint32_t version;               /* 2 or 3 */
    uint32_t cluster_bits;          /* 9..21 */
    uint64_t cluster_size;
    uint32_t l2_bits;               /* log2(entries per L2 table) */
    int extended_l2;                /* 32 subclusters per cluster */
    uint32_t refcount_order;        /* 0..6 */
    uint32_t crypt_method;          /* QCOW2_CRYPT_* (0..2) */
    uint64_t size;                  /* the header's size field */
    uint32_t header_length;

    /* Tables: offsets are cluster aligned and offset + size fit in int64.
     * The L1 table is the active one, or a loaded snapshot's (which may
     * not cover the virtual size: entries past l1_size are unallocated). */
    uint64_t l1_table_offset;
    uint32_t l1_size;               /* entries */
    uint64_t refcount_table_offset;
    uint32_t refcount_table_clusters;
    uint64_t snapshots_offset;
    uint32_t nb_snapshots;

    uint64_t incompatible_features;
    uint64_t compatible_features;
    uint64_t autoclear_features;
    uint8_t compression_type;       /* QCOW2_COMPRESSION_* */

    char *backing_file;             /* NULL or the stored name (no NULs) */
    char *backing_format;           /* NULL or from the extension */
    char *data_file;                /* NULL or the external data file name */
    struct ins_bdev *data_bdev;     /* opened external data file (INS_O_READ
                                     * with the data-file bit), else NULL */
    unsigned open_flags;            /* INS_O_* given to open */

    int has_crypto_header;
    uint64_t crypto_header_offset;
    uint64_t crypto_header_length;

    uint32_t nb_bitmaps;
    uint64_t bitmap_directory_offset;
    uint64_t bitmap_directory_size;
    struct qcow2_bitmap *bitmaps;   /* nb_bitmaps entries, directory order */

    /* Internal snapshots as qemu lists them (ids/names truncated as
     * qemu's QEMUSnapshotInfo does). */
    struct ins_snapshot *snapshots;
    size_t n_snapshots;
    /* The same snapshots' locations (kept when info takes the list). */
    struct qcow2_snapshot_loc *snap_locs;
    size_t n_snap_locs;

    struct qcow2_reader *reader;    /* read state (qcow2_read.c), lazily */
};

#endif

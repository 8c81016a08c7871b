/*
 * vmdk.h - the vmdk driver's parsed state, shared with read code.
 *
 * An image is a list of extents laid end to end in guest order, as qemu's
 * block/vmdk.c keeps them.  A flat extent maps its guest range linearly
 * onto a file; a sparse one (VMDK4 "KDMV", VMDK3 "COWD" or seSparse) maps
 * it through a grain directory (L1) and grain tables (L2).  open never
 * loads the tables: read code fetches what it needs, bounded by the
 * values below, which open has already validated as qemu does.
 */
#ifndef INSTAR_VMDK_H
#define INSTAR_VMDK_H

#include "engine.h"

struct vmdk_extent {
    struct ins_bdev *file;      /* the file holding this extent */
    char type[11];              /* descriptor type ("FLAT", "SPARSE", ...);
                                   "" for the image's own sparse file */
    int flat;
    int compressed;             /* deflate grains (streamOptimized) */
    int has_marker;             /* grains carry a 12-byte marker */
    int has_zero_grain;         /* GTE 1 means "reads as zeros" */
    int sesparse;
    int is_image_file;          /* the image's own file, not a listed extent */
    uint32_t version;
    /* qemu keeps sector counts in int64_t with wrapping arithmetic. */
    int64_t sectors;            /* guest sectors this extent covers */
    int64_t end_sector;         /* first guest sector after it */
    uint64_t flat_start_offset; /* bytes into file (flat extents) */
    uint64_t l1_table_offset;   /* bytes into file (sparse extents) */
    uint64_t l1_backup_offset;  /* 0 when there is none */
    uint32_t l1_size;           /* L1 entries (at most 32Mi) */
    uint32_t l1_entry_sectors;  /* guest sectors one L1 entry covers */
    uint32_t l2_size;           /* entries in one grain table */
    int64_t cluster_sectors;    /* grain size; for flat extents, sectors */
    int entry_size;             /* bytes per L1/L2 entry: 4, or 8 (seSparse) */
    uint64_t sesparse_l2_tables_offset;
    uint64_t sesparse_clusters_offset;
    /* Read caches: the last L1 entry and grain table looked up. */
    int l1_cached;
    uint32_t l1_cached_index;
    uint64_t l1_cached_value;
    uint8_t *l2_cache;          /* l2_size * entry_size bytes, or NULL */
    uint32_t l2_cached_offset;  /* sector of the cached table; 0 = none */
};

/* A file opened for an extent: a child node "extents.N" in qemu 8.0+. */
struct vmdk_file {
    char name[32];
    char *path;                 /* as combined from the descriptor */
    struct ins_bdev *bd;
};

struct vmdk_image {
    struct ins_image base;
    struct vmdk_extent *extents;
    size_t n_extents;
    struct vmdk_file *files;    /* extent files in the order qemu attaches them */
    size_t n_files;
    char *create_type;          /* NULL for a bare COWD file */
    uint32_t cid;
    uint32_t parent_cid;
    uint64_t desc_offset;       /* where CID and parent hint are read */
    char *backing;              /* parentFileNameHint, or NULL */
};

#endif

/*
 * qcow2.c - the qcow2 format: probing, header validation and info.
 *
 * open() validates an image the way qemu's qcow2_do_open() does when
 * qemu-img info opens it (read-only, BDRV_O_NO_IO, no backing file), in
 * the same order and with the same messages, so that a hostile image fails
 * here exactly where it fails in qemu-img.  Unlike qemu we do not load the
 * L1 or refcount tables: info does not need them, so memory stays bounded
 * whatever the virtual size.  We only reproduce the one way reading them
 * can fail (an offset past qemu's maximum request offset).
 *
 * Like qemu-img info since the CVE-2024-4467 fix, info names an external
 * data file but never opens it.  Opened for reading (INS_O_READ), the
 * image is checked as qemu opens it for I/O: the data file is opened
 * (relative to the current directory, as qemu does) and an encrypted
 * image is refused, since instar never takes a key.
 */
#include "qcow2_read.h"
#include "luks.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

/*
 * qemu rejects requests beyond BDRV_MAX_LENGTH (INT64_MAX rounded down to
 * 1 GiB) with EIO; anything else past the end of the file reads as zeros.
 */
#define QEMU_MAX_LENGTH     0x7fffffffc0000000ull
#define QEMU_INT_MAX        0x7fffffffull
#define LUKS_HEADER_SIZE    592     /* what qemu's LUKS open reads first */
#define FEATURE_ENTRY_SIZE  48      /* type, bit, name[46] */
#define BITMAP_ENTRY_SIZE   24
#define BME_MAX_TABLE_SIZE  0x8000000u
#define BME_MAX_PHYS_SIZE   0x20000000ull
#define BME_MIN_GRAN_BITS   9
#define BME_MAX_GRAN_BITS   31
#define BME_MAX_NAME_SIZE   1023
#define BME_FLAG_IN_USE     (1u << 0)
#define BME_FLAG_AUTO       (1u << 1)
#define BME_RESERVED_FLAGS  0xfffffffcu
#define BME_ENTRY_RESERVED  0xff000000000001feull
#define BME_ENTRY_OFFSET    0x00fffffffffffe00ull
#define BME_ENTRY_ALL_ONES  1ull
/* Our own bound on bitmap table bytes scanned per image (qemu has none;
 * real images need a few KiB). */
#define BITMAP_SCAN_BUDGET  (256ull << 20)
/* qemu's QEMUSnapshotInfo holds id_str[128] and name[256]. */
#define SNAPSHOT_ID_MAX     127
#define SNAPSHOT_NAME_MAX   255

/* Reads as qemu's bdrv_pread() on the image file does. */
static int qread(struct ins_bdev *bd, void *buf, uint64_t len, uint64_t off)
{
    if (off > QEMU_MAX_LENGTH || len > QEMU_MAX_LENGTH - off)
        return INS_EIO;
    if (len > SIZE_MAX)
        return INS_ENOMEM;
    return ins_read_zfill(bd, buf, (size_t)len, off);
}

static const char *errno_text(int rc)
{
    switch (rc) {
    case INS_ENOMEM: return "Cannot allocate memory";
    case INS_EFBIG: return "File too large";
    case INS_EINVAL: return "Invalid argument";
    default: return "Input/output error";
    }
}

static int no_memory(struct ins_ctx *ctx)
{
    return ins_error(ctx, INS_ENOMEM, "Out of memory");
}

/* qemu opening an encrypted image for I/O without a key. */
static int no_key(struct ins_ctx *ctx)
{
    return ins_error(ctx, INS_ENOTSUP,
                     "Parameter 'encrypt.key-secret' is required for cipher");
}

/* ---- probe ---- */

static int qcow2_probe(struct ins_ctx *ctx, struct ins_bdev *file,
                       const uint8_t *head, size_t head_len)
{
    uint8_t h[8] = { 0 };

    (void)ctx; (void)file;
    /* qemu probes a zero-padded 2 KiB buffer, so a short file still
     * counts if its first bytes say qcow2. */
    memcpy(h, head, head_len < sizeof(h) ? head_len : sizeof(h));
    if (ins_be32(h) == QCOW2_MAGIC && ins_be32(h + 4) >= 2)
        return 100;
    return 0;
}

/* ---- header ---- */

struct raw_header {
    uint32_t magic, version;
    uint64_t backing_file_offset;
    uint32_t backing_file_size;
    uint32_t cluster_bits;
    uint64_t size;
    uint32_t crypt_method;
    uint32_t l1_size;
    uint64_t l1_table_offset;
    uint64_t refcount_table_offset;
    uint32_t refcount_table_clusters;
    uint32_t nb_snapshots;
    uint64_t snapshots_offset;
    uint64_t incompatible, compatible, autoclear;
    uint32_t refcount_order;
    uint32_t header_length;
    uint8_t compression_type;
};

static void decode_header(const uint8_t *b, struct raw_header *h)
{
    h->magic = ins_be32(b);
    h->version = ins_be32(b + 4);
    h->backing_file_offset = ins_be64(b + 8);
    h->backing_file_size = ins_be32(b + 16);
    h->cluster_bits = ins_be32(b + 20);
    h->size = ins_be64(b + 24);
    h->crypt_method = ins_be32(b + 32);
    h->l1_size = ins_be32(b + 36);
    h->l1_table_offset = ins_be64(b + 40);
    h->refcount_table_offset = ins_be64(b + 48);
    h->refcount_table_clusters = ins_be32(b + 56);
    h->nb_snapshots = ins_be32(b + 60);
    h->snapshots_offset = ins_be64(b + 64);
    if (h->version == 2) {
        /* Version 2 has none of the later fields. */
        h->incompatible = h->compatible = h->autoclear = 0;
        h->refcount_order = 4;
        h->header_length = QCOW2_V2_HEADER_LENGTH;
        h->compression_type = QCOW2_COMPRESSION_ZLIB;
        return;
    }
    h->incompatible = ins_be64(b + 72);
    h->compatible = ins_be64(b + 80);
    h->autoclear = ins_be64(b + 88);
    h->refcount_order = ins_be32(b + 96);
    h->header_length = ins_be32(b + 100);
    /* Older v3 headers end before the compression type byte. */
    h->compression_type = h->header_length > 104 ? b[104] : QCOW2_COMPRESSION_ZLIB;
}

/* qcow2_validate_table(): entry count and offset of an on-disk table. */
static int validate_table(struct ins_ctx *ctx, const struct qcow2_image *st,
                          uint64_t offset, uint64_t entries, uint64_t entry_len,
                          uint64_t max_bytes, const char *what)
{
    if (entries > max_bytes / entry_len)
        return ins_error(ctx, INS_EFBIG, "%s too large", what);
    if ((uint64_t)INT64_MAX - entries * entry_len < offset ||
        (offset & (st->cluster_size - 1)) != 0)
        return ins_error(ctx, INS_EINVAL, "%s offset invalid", what);
    return INS_OK;
}

/* ---- header extensions ---- */

/* "Unsupported qcow2 feature(s): ..." naming features from the image's
 * own feature table where it has one. */
static int report_unsupported(struct ins_ctx *ctx, const uint8_t *table,
                              uint64_t mask)
{
    char list[sizeof(ctx->errmsg)];
    size_t len = 0;
    const uint8_t *e;

    list[0] = '\0';
    for (e = table; e && e[2] != '\0'; e += FEATURE_ENTRY_SIZE) {
        uint64_t bit = 1ull << (e[1] & 63);   /* x86 shift semantics */

        if (e[0] != 0 || !(mask & bit))
            continue;
        len += (size_t)snprintf(list + len, sizeof(list) - len, "%s%.46s",
                                len ? ", " : "", (const char *)e + 2);
        if (len >= sizeof(list))
            len = sizeof(list) - 1;
        mask &= ~bit;
    }
    if (mask)
        snprintf(list + len, sizeof(list) - len,
                 "%sUnknown incompatible feature: %" PRIx64, len ? ", " : "", mask);
    return ins_error(ctx, INS_ENOTSUP, "Unsupported qcow2 feature(s): %s", list);
}

/* Validates the LUKS header inside the image as qemu's LUKS open does
 * (without a key); with tb, also describes it into dict. */
static int luks_check(struct qcow2_image *st, struct tree_builder *tb,
                      struct tree *dict)
{
    struct ins_ctx *ctx = st->base.ctx;
    uint64_t off = st->crypto_header_offset;

    /* qemu reads the header through a callback bounded by the
     * extension's length, then through the block layer. */
    if (st->crypto_header_length < LUKS_HEADER_SIZE)
        return ins_error(ctx, INS_EINVAL,
                         "Request for data outside of extension header");
    if (off > QEMU_MAX_LENGTH || LUKS_HEADER_SIZE > QEMU_MAX_LENGTH - off)
        return ins_error(ctx, INS_EIO, "Could not read encryption header: %s",
                         errno_text(INS_EIO));
    return ins_luks_describe(ctx, st->base.file, off, tb, dict, NULL);
}

static int ext_bitmaps(struct qcow2_image *st, uint64_t off, uint32_t len,
                       int early)
{
    struct ins_ctx *ctx = st->base.ctx;
    uint8_t b[24];
    uint32_t nb;
    uint64_t dir_size, dir_off;
    int rc;

    if (len != sizeof(b))
        return ins_error(ctx, INS_EINVAL, "bitmaps_ext: Invalid extension length");
    if (!(st->autoclear_features & QCOW2_AUTOCLEAR_BITMAPS)) {
        /* qemu warns that the bitmaps are stale and carries on. */
        return INS_OK;
    }
    rc = qread(st->base.file, b, sizeof(b), off);
    if (rc < 0)
        return ins_error(ctx, rc, "bitmaps_ext: Could not read ext header: %s",
                         errno_text(rc));
    nb = ins_be32(b);
    dir_size = ins_be64(b + 8);
    dir_off = ins_be64(b + 16);
    if (ins_be32(b + 4) != 0)
        return ins_error(ctx, INS_EINVAL, "bitmaps_ext: Reserved field is not zero");
    if (nb > QCOW2_MAX_BITMAPS)
        return ins_error(ctx, INS_EINVAL, "bitmaps_ext: Image has %" PRIu32
                         " bitmaps, exceeding the QEMU supported maximum of %u",
                         nb, QCOW2_MAX_BITMAPS);
    if (nb == 0)
        return ins_error(ctx, INS_EINVAL, "found bitmaps extension with zero bitmaps");
    if (dir_off & (st->cluster_size - 1))
        return ins_error(ctx, INS_EINVAL, "bitmaps_ext: invalid bitmap directory offset");
    if (dir_size > QCOW2_MAX_BITMAP_DIRECTORY_SIZE)
        return ins_error(ctx, INS_EINVAL, "bitmaps_ext: bitmap directory size (%"
                         PRIu64 ") exceeds the maximum supported size (%u)",
                         dir_size, (unsigned)QCOW2_MAX_BITMAP_DIRECTORY_SIZE);
    if (!early) {
        st->nb_bitmaps = nb;
        st->bitmap_directory_size = dir_size;
        st->bitmap_directory_offset = dir_off;
    }
    return INS_OK;
}

static int ext_crypto(struct qcow2_image *st, uint64_t off, uint32_t len,
                      int early)
{
    struct ins_ctx *ctx = st->base.ctx;
    uint8_t b[16];
    int rc;

    /* During the early walk qemu has not looked at the crypt method yet,
     * so a crypto header extension always ends that walk. */
    if (early || st->crypt_method != QCOW2_CRYPT_LUKS)
        return ins_error(ctx, INS_EINVAL, "CRYPTO header extension only "
                         "expected with LUKS encryption method");
    if (len != sizeof(b))
        return ins_error(ctx, INS_EINVAL, "CRYPTO header extension size %" PRIu32
                         ", but expected size %zu", len, sizeof(b));
    rc = qread(st->base.file, b, sizeof(b), off);
    if (rc < 0)
        return ins_error(ctx, rc, "Unable to read CRYPTO header extension: %s",
                         errno_text(rc));
    st->crypto_header_offset = ins_be64(b);
    st->crypto_header_length = ins_be64(b + 8);
    if (st->crypto_header_offset % st->cluster_size)
        return ins_error(ctx, INS_EINVAL, "Encryption header offset '%" PRIu64
                         "' is not a multiple of cluster size '%" PRIu64 "'",
                         st->crypto_header_offset, st->cluster_size);
    if (st->open_flags & INS_O_READ)
        return no_key(ctx);
    rc = luks_check(st, NULL, NULL);
    if (rc < 0)
        return rc;
    st->has_crypto_header = 1;
    return INS_OK;
}

/* Reads len bytes at off as a C string (stopping at the first NUL). */
static int read_cstring(struct qcow2_image *st, uint64_t off, uint32_t len,
                        char **out)
{
    struct ins_ctx *ctx = st->base.ctx;
    char *s = ins_malloc(ctx, (size_t)len + 1);
    int rc;

    if (!s)
        return no_memory(ctx);
    rc = qread(st->base.file, s, len, off);
    if (rc < 0) {
        ins_free(ctx, s);
        return rc;
    }
    s[len] = '\0';
    ins_free(ctx, *out);
    *out = s;
    return INS_OK;
}

/*
 * Walks the header extensions between header_length and ext_end, as
 * qcow2_read_extensions() does.  The early walk (qemu runs it only to
 * find the feature name table for an error message) records nothing but
 * that table, in *ftab.
 */
static int read_extensions(struct qcow2_image *st, uint64_t ext_end,
                           int early, uint8_t **ftab)
{
    struct ins_ctx *ctx = st->base.ctx;
    uint64_t off = st->header_length;
    int rc;

    while (off < ext_end) {
        uint8_t eh[8];
        uint32_t magic, len;

        rc = qread(st->base.file, eh, sizeof(eh), off);
        if (rc < 0)
            return ins_error(ctx, rc, "qcow2_read_extension: ERROR: pread fail "
                             "from offset %" PRIu64 ": %s", off, errno_text(rc));
        magic = ins_be32(eh);
        len = ins_be32(eh + 4);
        off += sizeof(eh);
        if (off > ext_end || len > ext_end - off)
            return ins_error(ctx, INS_EINVAL, "Header extension too large");

        switch (magic) {
        case QCOW2_EXT_END:
            return INS_OK;
        case QCOW2_EXT_BACKING_FMT:
            if (len >= 16)
                return ins_error(ctx, INS_EINVAL, "ERROR: ext_backing_format: "
                                 "len=%" PRIu32 " too large (>=16)", len);
            if (!early) {
                rc = read_cstring(st, off, len, &st->backing_format);
                if (rc < 0)
                    return rc == INS_ENOMEM ? rc : ins_error(ctx, rc,
                           "ERROR: ext_backing_format: Could not read format name: %s",
                           errno_text(rc));
            }
            break;
        case QCOW2_EXT_FEATURE_TABLE:
            if (early) {
                /* Two spare zeroed entries terminate the table. */
                uint8_t *t = ins_calloc(ctx, 1, (size_t)len + 2 * FEATURE_ENTRY_SIZE);

                if (!t)
                    return no_memory(ctx);
                rc = qread(st->base.file, t, len, off);
                if (rc < 0) {
                    ins_free(ctx, t);
                    return rc;
                }
                ins_free(ctx, *ftab);
                *ftab = t;
            }
            break;
        case QCOW2_EXT_CRYPTO_HEADER:
            rc = ext_crypto(st, off, len, early);
            if (rc < 0)
                return rc;
            break;
        case QCOW2_EXT_BITMAPS:
            rc = ext_bitmaps(st, off, len, early);
            if (rc < 0)
                return rc;
            break;
        case QCOW2_EXT_DATA_FILE:
            if (!early) {
                rc = read_cstring(st, off, len, &st->data_file);
                if (rc < 0)
                    return rc == INS_ENOMEM ? rc : ins_error(ctx, rc,
                           "ERROR: Could not read data file name: %s", errno_text(rc));
            }
            break;
        default:
            /* Unknown extensions are kept by qemu and ignored here. */
            break;
        }
        off += ((uint64_t)len + 7) & ~(uint64_t)7;
    }
    return INS_OK;
}

/* ---- internal snapshots ---- */

static int snapshot_read_error(struct ins_ctx *ctx, int rc)
{
    if (rc == INS_ENOMEM)
        return no_memory(ctx);
    return ins_error(ctx, rc, "Failed to read snapshot table: %s", errno_text(rc));
}

/* Reads a stored string of len bytes, keeping at most keep bytes up to the
 * first NUL (qemu reads all of it, then copies it into a fixed array). */
static int read_snapshot_string(struct qcow2_image *st, uint64_t off,
                                uint32_t len, size_t keep, char **out)
{
    struct ins_ctx *ctx = st->base.ctx;
    size_t n = len < keep ? len : keep;
    char *s;
    int rc;

    if (off > QEMU_MAX_LENGTH || len > QEMU_MAX_LENGTH - off)
        return snapshot_read_error(ctx, INS_EIO);
    s = ins_malloc(ctx, n + 1);
    if (!s)
        return no_memory(ctx);
    rc = qread(st->base.file, s, n, off);
    if (rc < 0) {
        ins_free(ctx, s);
        return snapshot_read_error(ctx, rc);
    }
    s[n] = '\0';
    *out = s;
    return INS_OK;
}

static int read_snapshots(struct qcow2_image *st)
{
    struct ins_ctx *ctx = st->base.ctx;
    uint64_t off = st->snapshots_offset, table_len = 0;
    uint32_t i;
    int rc;

    if (st->nb_snapshots == 0)
        return INS_OK;
    /* nb_snapshots <= 65536 was checked with the header. */
    st->snapshots = ins_calloc(ctx, st->nb_snapshots, sizeof(*st->snapshots));
    st->snap_locs = ins_calloc(ctx, st->nb_snapshots, sizeof(*st->snap_locs));
    if (!st->snapshots || !st->snap_locs)
        return no_memory(ctx);

    for (i = 0; i < st->nb_snapshots; i++) {
        struct ins_snapshot *sn = &st->snapshots[i];
        struct qcow2_snapshot_loc *loc = &st->snap_locs[i];
        uint8_t h[QCOW2_SNAPSHOT_HEADER_SIZE], extra[24];
        uint32_t extra_size, known;
        uint16_t id_size, name_size;

        table_len = (table_len + 7) & ~(uint64_t)7;
        off = (off + 7) & ~(uint64_t)7;
        rc = qread(st->base.file, h, sizeof(h), off);
        if (rc < 0)
            return snapshot_read_error(ctx, rc);
        off += sizeof(h);
        id_size = ins_be16(h + 12);
        name_size = ins_be16(h + 14);
        sn->date_sec = ins_be32(h + 16);
        sn->date_nsec = ins_be32(h + 20);
        sn->vm_clock_nsec = ins_be64(h + 24);
        sn->vm_state_size = ins_be32(h + 32);
        extra_size = ins_be32(h + 36);
        st->n_snapshots = i + 1;
        st->n_snap_locs = i + 1;
        loc->l1_table_offset = ins_be64(h);
        loc->l1_size = ins_be32(h + 8);
        loc->id_size = id_size;
        loc->name_size = name_size;

        if (extra_size > QCOW2_MAX_SNAPSHOT_EXTRA_DATA)
            return ins_error(ctx, INS_EFBIG, "Too much extra metadata in "
                             "snapshot table entry %" PRIu32, i);
        /* The known extra data: 64-bit VM state size, disk size, icount. */
        known = extra_size < sizeof(extra) ? extra_size : sizeof(extra);
        memset(extra, 0, sizeof(extra));
        rc = qread(st->base.file, extra, known, off);
        if (rc < 0)
            return snapshot_read_error(ctx, rc);
        off += known;
        if (extra_size >= 8)
            sn->vm_state_size = ins_be64(extra);
        sn->has_icount = extra_size >= 24 && ins_be64(extra + 16) != UINT64_MAX;
        sn->icount = sn->has_icount ? ins_be64(extra + 16) : 0;
        if (extra_size > sizeof(extra)) {
            /* qemu keeps unknown extra data; only its read can fail. */
            uint64_t rest = extra_size - sizeof(extra);

            if (off > QEMU_MAX_LENGTH || rest > QEMU_MAX_LENGTH - off)
                return snapshot_read_error(ctx, INS_EIO);
            off += rest;
        }

        loc->id_offset = off;
        rc = read_snapshot_string(st, off, id_size, SNAPSHOT_ID_MAX, &sn->id);
        if (rc < 0)
            return rc;
        off += id_size;
        loc->name_offset = off;
        rc = read_snapshot_string(st, off, name_size, SNAPSHOT_NAME_MAX, &sn->name);
        if (rc < 0)
            return rc;
        off += name_size;

        table_len += QCOW2_SNAPSHOT_HEADER_SIZE + (uint64_t)extra_size +
                     id_size + name_size;
        if (table_len > QCOW2_MAX_SNAPSHOTS_SIZE ||
            off - st->snapshots_offset > QEMU_INT_MAX)
            return ins_error(ctx, INS_EFBIG, "Snapshot table is too big");
    }
    return INS_OK;
}

/* ---- persistent dirty bitmaps ---- */

struct name_set {
    const char **slot;
    size_t mask;
};

static uint64_t name_hash(const char *s)
{
    uint64_t h = 1469598103934665603ull;

    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 1099511628211ull;
    return h;
}

/* Adds name; returns 1 if it was new, 0 if already present. */
static int name_set_add(struct name_set *set, const char *name)
{
    size_t i = (size_t)name_hash(name) & set->mask;

    while (set->slot[i]) {
        if (strcmp(set->slot[i], name) == 0)
            return 0;
        i = (i + 1) & set->mask;
    }
    set->slot[i] = name;
    return 1;
}

static int name_set_has(const struct name_set *set, const char *name)
{
    size_t i = (size_t)name_hash(name) & set->mask;

    while (set->slot[i]) {
        if (strcmp(set->slot[i], name) == 0)
            return 1;
        i = (i + 1) & set->mask;
    }
    return 0;
}

/* The virtual size as qemu's bdrv_getlength() sees it, or -1 (EFBIG). */
static int64_t qemu_length(const struct qcow2_image *st)
{
    uint64_t len = st->size & ~(uint64_t)511;

    return len > (uint64_t)INT64_MAX ? -1 : (int64_t)len;
}

/* check_dir_entry() */
static int bitmap_entry_ok(const struct qcow2_image *st, uint64_t table_off,
                           uint32_t table_size, uint32_t flags, uint8_t type,
                           uint8_t gran, uint16_t name_size)
{
    int64_t len = qemu_length(st);
    uint64_t phys;

    if (table_size == 0 || table_off == 0 || table_off % st->cluster_size ||
        table_size > BME_MAX_TABLE_SIZE || gran > BME_MAX_GRAN_BITS ||
        gran < BME_MIN_GRAN_BITS || (flags & BME_RESERVED_FLAGS) ||
        name_size > BME_MAX_NAME_SIZE || type != 1)
        return 0;
    if (len < 0)
        return 0;
    phys = (uint64_t)table_size * st->cluster_size;
    if (phys > BME_MAX_PHYS_SIZE)
        return 0;
    if (!(flags & BME_FLAG_IN_USE) && (uint64_t)len > ((phys * 8) << gran))
        return 0;
    return 1;
}

/*
 * bitmap_list_load(): reads and checks the bitmap directory into
 * st->bitmaps.
 */
static int load_bitmap_directory(struct qcow2_image *st)
{
    struct ins_ctx *ctx = st->base.ctx;
    uint64_t size = st->bitmap_directory_size, pos = 0;
    uint32_t n = 0;
    uint8_t *dir;
    int rc;

    if (size == 0)
        return ins_error(ctx, INS_EINVAL, "Requested bitmap directory size is zero");
    if (size > QCOW2_MAX_BITMAP_DIRECTORY_SIZE)
        return ins_error(ctx, INS_EINVAL, "Requested bitmap directory size is too big");
    dir = ins_malloc(ctx, (size_t)size);
    st->bitmaps = ins_calloc(ctx, st->nb_bitmaps, sizeof(*st->bitmaps));
    if (!dir || !st->bitmaps) {
        ins_free(ctx, dir);
        return no_memory(ctx);
    }
    rc = qread(st->base.file, dir, size, st->bitmap_directory_offset);
    if (rc < 0) {
        ins_free(ctx, dir);
        return ins_error(ctx, rc, "Failed to read bitmap directory: %s",
                         errno_text(rc));
    }

    rc = INS_OK;
    while (pos < size) {
        const uint8_t *e = dir + pos;
        struct qcow2_bitmap *bm;
        uint32_t table_size, flags, extra, esize;
        uint16_t name_size;
        int64_t next;

        if (size - pos < BITMAP_ENTRY_SIZE)
            goto broken;
        if (++n > st->nb_bitmaps) {
            rc = ins_error(ctx, INS_EINVAL, "More bitmaps found than specified "
                           "in header extension");
            goto out;
        }
        table_size = ins_be32(e + 8);
        flags = ins_be32(e + 12);
        name_size = ins_be16(e + 18);
        extra = ins_be32(e + 20);
        /* qemu sizes entries in an int: keep its wrap-around, so that an
         * absurd extra_data_size reaches the "not supported" error. */
        esize = (uint32_t)BITMAP_ENTRY_SIZE + name_size + extra;
        esize = (esize + 7) & ~7u;
        next = (int64_t)pos + (int32_t)esize;
        if (next > (int64_t)size)
            goto broken;
        if (extra != 0) {
            rc = ins_error(ctx, INS_EINVAL, "Bitmap extra data is not supported");
            goto out;
        }
        if (!bitmap_entry_ok(st, ins_be64(e), table_size, flags, e[16], e[17],
                             name_size)) {
            rc = ins_error(ctx, INS_EINVAL, "Bitmap '%.*s' doesn't satisfy the "
                           "constraints", (int)name_size,
                           (const char *)e + BITMAP_ENTRY_SIZE);
            goto out;
        }
        bm = &st->bitmaps[n - 1];
        bm->name = ins_strndup(ctx, (const char *)e + BITMAP_ENTRY_SIZE, name_size);
        if (!bm->name) {
            rc = no_memory(ctx);
            goto out;
        }
        bm->flags = flags;
        bm->granularity_bits = e[17];
        bm->table_offset = ins_be64(e);
        bm->table_size = table_size;
        pos = (uint64_t)next;
    }
    if (n != st->nb_bitmaps) {
        rc = ins_error(ctx, INS_EINVAL, "Less bitmaps found than specified in "
                       "header extension");
        goto out;
    }
    goto out;
broken:
    rc = ins_error(ctx, INS_EINVAL, "Broken bitmap directory");
out:
    ins_free(ctx, dir);
    return rc;
}

/* bitmap_table_load()'s entry check, over the part of the table inside
 * the file (beyond it qemu reads zeros, which are valid entries). */
static int bitmap_table_ok(struct qcow2_image *st, uint64_t off,
                           uint32_t entries, uint64_t *budget)
{
    struct bitmap_chunk { uint8_t b[8192]; } *buf;
    struct ins_ctx *ctx = st->base.ctx;
    uint64_t bytes = (uint64_t)entries * 8, end = st->base.file->size, done;
    int rc = 1;

    if (off > QEMU_MAX_LENGTH || bytes > QEMU_MAX_LENGTH - off)
        return INS_EIO;
    if (off >= end)
        return 1;
    if (bytes > end - off)
        bytes = end - off;
    if (bytes > *budget)
        return ins_error(ctx, INS_EFBIG, "bitmap tables are too large to check");
    *budget -= bytes;
    buf = ins_malloc(ctx, sizeof(*buf));
    if (!buf)
        return no_memory(ctx);
    for (done = 0; done < bytes && rc == 1;) {
        size_t n = bytes - done < sizeof(buf->b) ? (size_t)(bytes - done) : sizeof(buf->b);
        size_t i;
        int r = qread(st->base.file, buf->b, n, off + done);

        if (r < 0) {
            rc = r;
            break;
        }
        for (i = 0; i + 8 <= n; i += 8) {
            uint64_t ent = ins_be64(buf->b + i), data = ent & BME_ENTRY_OFFSET;

            if ((ent & BME_ENTRY_RESERVED) ||
                (data && ((ent & BME_ENTRY_ALL_ONES) || data % st->cluster_size))) {
                rc = 0;
                break;
            }
        }
        done += n;
    }
    ins_free(ctx, buf);
    return rc;
}

/* The bitmap table size in clusters qemu expects for a bitmap of this
 * granularity over the virtual size (hbitmap serialization size). */
static uint64_t bitmap_table_clusters(const struct qcow2_image *st,
                                      uint32_t gran_bits)
{
    uint64_t len = (uint64_t)qemu_length(st), words, bytes;

    if (len == 0)
        return 0;
    words = (((len - 1) >> gran_bits) >> 6) + 1;
    bytes = words * 8;
    return (bytes + st->cluster_size - 1) >> st->cluster_bits;
}

/* qcow2_load_dirty_bitmaps(), which qemu runs on every open: a bitmap
 * whose name repeats, whose table has bad entries or the wrong size for
 * the image makes the open fail. */
static int load_bitmaps(struct qcow2_image *st)
{
    struct ins_ctx *ctx = st->base.ctx;
    uint64_t budget = BITMAP_SCAN_BUDGET;
    struct name_set set;
    size_t cap = 16;
    uint32_t i;
    int rc;

    if (st->nb_bitmaps == 0)
        return INS_OK;
    rc = load_bitmap_directory(st);
    if (rc < 0)
        return rc;
    while (cap < (size_t)st->nb_bitmaps * 2)
        cap <<= 1;
    set.slot = ins_calloc(ctx, cap, sizeof(*set.slot));
    set.mask = cap - 1;
    if (!set.slot)
        return no_memory(ctx);

    for (i = 0; i < st->nb_bitmaps; i++) {
        const struct qcow2_bitmap *bm = &st->bitmaps[i];

        if ((bm->flags & BME_FLAG_IN_USE) && name_set_has(&set, bm->name))
            continue;
        if (!name_set_add(&set, bm->name)) {
            rc = ins_error(ctx, INS_EINVAL, "Bitmap already exists: %s", bm->name);
            break;
        }
        if (bm->flags & BME_FLAG_IN_USE)
            continue;       /* its data is stale; qemu does not read it */
        rc = bitmap_table_ok(st, bm->table_offset, bm->table_size, &budget);
        if (rc < 0 && rc != INS_EIO)
            break;
        if (rc <= 0) {
            rc = ins_error(ctx, rc < 0 ? rc : INS_EINVAL, "Could not read "
                           "bitmap_table table from image for bitmap '%s': %s",
                           bm->name, rc < 0 ? errno_text(rc) : "Invalid argument");
            break;
        }
        rc = INS_OK;
        if (bitmap_table_clusters(st, bm->granularity_bits) != bm->table_size) {
            rc = ins_error(ctx, INS_EINVAL, "Could not read bitmap '%s' from "
                           "image: Invalid argument", bm->name);
            break;
        }
    }
    ins_free(ctx, set.slot);
    return rc;
}

/* ---- open ---- */

static void qcow2_close(struct ins_image *img)
{
    struct qcow2_image *st = (struct qcow2_image *)img;
    struct ins_ctx *ctx;
    size_t i;

    if (!st)
        return;
    ctx = st->base.ctx;
    qcow2_reader_free(st);
    for (i = 0; i < st->n_snapshots; i++) {
        ins_free(ctx, st->snapshots[i].id);
        ins_free(ctx, st->snapshots[i].name);
    }
    ins_free(ctx, st->snapshots);
    ins_free(ctx, st->snap_locs);
    if (st->bitmaps)
        for (i = 0; i < st->nb_bitmaps; i++)
            ins_free(ctx, st->bitmaps[i].name);
    ins_free(ctx, st->bitmaps);
    ins_free(ctx, st->backing_file);
    ins_free(ctx, st->backing_format);
    ins_free(ctx, st->data_file);
    ins_free(ctx, st);
}

/* The checks qcow2_do_open() makes on the fixed header, in its order. */
static int check_header(struct qcow2_image *st, const struct raw_header *h)
{
    struct ins_ctx *ctx = st->base.ctx;
    uint64_t shift_size, l1_index;
    uint32_t shift;
    int rc;

    if (h->magic != QCOW2_MAGIC)
        return ins_error(ctx, INS_EINVAL, "Image is not in qcow2 format");
    if (h->version < 2 || h->version > 3)
        return ins_error(ctx, INS_ENOTSUP, "Unsupported qcow2 version %" PRIu32,
                         h->version);
    if (h->cluster_bits < QCOW2_MIN_CLUSTER_BITS ||
        h->cluster_bits > QCOW2_MAX_CLUSTER_BITS)
        return ins_error(ctx, INS_EINVAL, "Unsupported cluster size: 2^%" PRIu32,
                         h->cluster_bits);
    st->version = h->version;
    st->cluster_bits = h->cluster_bits;
    st->cluster_size = 1ull << h->cluster_bits;
    if (h->version == 3 && h->header_length < QCOW2_V3_MIN_HEADER)
        return ins_error(ctx, INS_EINVAL, "qcow2 header too short");
    if (h->header_length > st->cluster_size)
        return ins_error(ctx, INS_EINVAL, "qcow2 header exceeds cluster size");
    if (h->backing_file_offset > st->cluster_size)
        return ins_error(ctx, INS_EINVAL, "Invalid backing file offset");

    st->header_length = h->header_length;
    st->incompatible_features = h->incompatible;
    st->compatible_features = h->compatible;
    st->autoclear_features = h->autoclear;
    st->compression_type = h->compression_type;
    switch (h->compression_type) {
    case QCOW2_COMPRESSION_ZLIB:
        if (h->incompatible & QCOW2_INCOMPAT_COMPRESSION)
            return ins_error(ctx, INS_EINVAL, "qcow2: Compression type "
                             "incompatible feature bit must not be set");
        break;
    case QCOW2_COMPRESSION_ZSTD:
        if (!(h->incompatible & QCOW2_INCOMPAT_COMPRESSION))
            return ins_error(ctx, INS_EINVAL, "qcow2: Compression type "
                             "incompatible feature bit must be set");
        break;
    default:
        return ins_error(ctx, INS_ENOTSUP, "qcow2: unknown compression type: %u",
                         h->compression_type);
    }

    if (h->incompatible & ~QCOW2_INCOMPAT_MASK) {
        uint64_t ext_end = h->backing_file_offset ? h->backing_file_offset
                                                  : st->cluster_size;
        uint8_t *ftab = NULL;

        /* The walk's own errors are ignored, as in qemu. */
        read_extensions(st, ext_end, 1, &ftab);
        rc = report_unsupported(ctx, ftab, h->incompatible & ~QCOW2_INCOMPAT_MASK);
        ins_free(ctx, ftab);
        return rc;
    }

    /* A corrupt image may be written only to repair it. */
    if ((h->incompatible & QCOW2_INCOMPAT_CORRUPT) &&
        (st->open_flags & INS_O_WRITE) && !(st->open_flags & INS_O_CHECK))
        return ins_error(ctx, INS_EREFUSED, "qcow2: Image is corrupt; cannot "
                         "be opened read/write");

    st->extended_l2 = (h->incompatible & QCOW2_INCOMPAT_EXTL2) != 0;
    if (st->extended_l2 && st->cluster_size / 32 < 512)
        return ins_error(ctx, INS_EINVAL, "Unsupported subcluster size: %" PRIu64,
                         st->cluster_size / 32);
    if (h->refcount_order > 6)
        return ins_error(ctx, INS_EINVAL, "Reference count entry width too "
                         "large; may not exceed 64 bits");
    st->refcount_order = h->refcount_order;
    st->crypt_method = h->crypt_method;
    st->l2_bits = st->cluster_bits - (st->extended_l2 ? 4 : 3);
    st->size = h->size;

    /* qemu-img check opens an image without a refcount table (and then
     * reports what that breaks). */
    if (h->refcount_table_clusters == 0 && !(st->open_flags & INS_O_CHECK))
        return ins_error(ctx, INS_EINVAL, "Image does not contain a reference "
                         "count table");
    rc = validate_table(ctx, st, h->refcount_table_offset,
                        h->refcount_table_clusters, st->cluster_size,
                        QCOW2_MAX_REFTABLE_SIZE, "Reference count table");
    if (rc < 0)
        return rc;
    st->refcount_table_offset = h->refcount_table_offset;
    st->refcount_table_clusters = h->refcount_table_clusters;
    /* In check mode the snapshot table is the check's business. */
    if (!(st->open_flags & INS_O_CHECK)) {
        rc = validate_table(ctx, st, h->snapshots_offset, h->nb_snapshots,
                            QCOW2_SNAPSHOT_HEADER_SIZE,
                            (uint64_t)QCOW2_SNAPSHOT_HEADER_SIZE * QCOW2_MAX_SNAPSHOTS,
                            "Snapshot table");
        if (rc < 0)
            return rc;
    }
    rc = validate_table(ctx, st, h->l1_table_offset, h->l1_size, 8,
                        QCOW2_MAX_L1_SIZE, "Active L1 table");
    if (rc < 0)
        return rc;
    st->l1_table_offset = h->l1_table_offset;
    st->l1_size = h->l1_size;

    /* size_to_l1(), including its unsigned wrap-around. */
    shift = st->cluster_bits + st->l2_bits;
    shift_size = 1ull << shift;
    l1_index = (h->size + shift_size - 1) >> shift;
    if (l1_index > QEMU_INT_MAX)
        return ins_error(ctx, INS_EFBIG, "Image is too big");
    if (h->l1_size < l1_index)
        return ins_error(ctx, INS_EINVAL, "L1 table is too small");
    /* qemu loads the L1 table here; only its offset can make that fail. */
    if (h->l1_size > 0 && h->l1_table_offset + (uint64_t)h->l1_size * 8 > QEMU_MAX_LENGTH)
        return ins_error(ctx, INS_EIO, "Could not read L1 table: %s",
                         errno_text(INS_EIO));
    if (h->crypt_method > QCOW2_CRYPT_LUKS)
        return ins_error(ctx, INS_EINVAL, "Unsupported encryption method %d",
                         (int)h->crypt_method);
    /* ... and then the refcount table. */
    if (h->refcount_table_offset +
        ((uint64_t)h->refcount_table_clusters << st->cluster_bits) > QEMU_MAX_LENGTH)
        return ins_error(ctx, INS_EIO, "Could not initialize refcount handling: %s",
                         errno_text(INS_EIO));
    st->snapshots_offset = h->snapshots_offset;
    st->nb_snapshots = h->nb_snapshots;
    return INS_OK;
}

/*
 * What qemu's open does beyond info's when it opens the image for I/O:
 * the external data file, and the encryption key it would need.
 */
static int open_for_io(struct qcow2_image *st)
{
    struct ins_ctx *ctx = st->base.ctx;
    int rc;

    if (st->incompatible_features & QCOW2_INCOMPAT_DATA_FILE) {
        if (!st->data_file)
            return ins_error(ctx, INS_EINVAL, "'data-file' is required for this image");
        /* qemu opens the name as given: relative to the current
         * directory, not to the image's. */
        rc = ctx->open_ref(ctx, INS_REF_DATA_FILE, "", st->data_file,
                           &st->data_bdev);
        if (rc < 0)
            return rc;
    } else if (st->autoclear_features & QCOW2_AUTOCLEAR_DATA_FILE_RAW) {
        return ins_error(ctx, INS_EINVAL, "data-file-raw requires a data file");
    }
    if (st->crypt_method == QCOW2_CRYPT_AES)
        return no_key(ctx);
    if (st->crypt_method == QCOW2_CRYPT_LUKS && !st->has_crypto_header)
        return ins_error(ctx, INS_EINVAL, "Missing CRYPTO header for crypt method %"
                         PRIu32, st->crypt_method);
    return INS_OK;
}

static int read_backing_name(struct qcow2_image *st, const struct raw_header *h)
{
    struct ins_ctx *ctx = st->base.ctx;
    uint64_t room;
    int rc;

    if (h->backing_file_offset == 0)
        return INS_OK;
    room = st->cluster_size - h->backing_file_offset;
    if (h->backing_file_size > (room < QCOW2_BACKING_NAME_MAX ? room
                                                              : QCOW2_BACKING_NAME_MAX))
        return ins_error(ctx, INS_EINVAL, "Backing file name too long");
    rc = read_cstring(st, h->backing_file_offset, h->backing_file_size,
                      &st->backing_file);
    if (rc < 0)
        return rc == INS_ENOMEM ? no_memory(ctx) : ins_error(ctx, rc,
               "Could not read backing file name: %s", errno_text(rc));
    return INS_OK;
}

static int qcow2_open(struct ins_ctx *ctx, struct ins_bdev *file,
                      unsigned flags, struct ins_image **out)
{
    struct qcow2_image *st;
    struct raw_header h;
    uint8_t buf[QCOW2_HEADER_SIZE];
    uint64_t ext_end;
    int rc;

    st = ins_calloc(ctx, 1, sizeof(*st));
    if (!st)
        return no_memory(ctx);
    st->open_flags = flags;
    st->base.drv = &ins_drv_qcow2;
    st->base.ctx = ctx;
    st->base.file = file;

    rc = qread(file, buf, sizeof(buf), 0);
    if (rc < 0) {
        rc = ins_error(ctx, rc, "Could not read qcow2 header: %s", errno_text(rc));
        goto fail;
    }
    decode_header(buf, &h);
    rc = check_header(st, &h);
    if (rc < 0)
        goto fail;

    ext_end = h.backing_file_offset ? h.backing_file_offset : st->cluster_size;
    rc = read_extensions(st, ext_end, 0, NULL);
    if (rc < 0)
        goto fail;
    if (flags & INS_O_READ) {
        rc = open_for_io(st);
        if (rc < 0)
            goto fail;
    }
    rc = read_backing_name(st, &h);
    if (rc < 0)
        goto fail;
    /* Like qemu, check mode leaves a broken snapshot table to the check. */
    if (!(flags & INS_O_CHECK)) {
        rc = read_snapshots(st);
        if (rc < 0)
            goto fail;
    }
    rc = load_bitmaps(st);
    if (rc < 0)
        goto fail;
    /* qemu's block layer, after the driver: the size must fit in int64. */
    if (qemu_length(st) < 0) {
        rc = ins_error(ctx, INS_EFBIG, "Could not refresh total sector count: "
                       "File too large");
        goto fail;
    }
    /*
     * Divergence: qemu-img info crashes (NULL crypto context in
     * qcow2_refresh_limits) on a LUKS image without its header
     * extension.  We fail with the message qemu gives when it does I/O.
     */
    if (st->crypt_method == QCOW2_CRYPT_LUKS && !st->has_crypto_header &&
        !(flags & INS_O_READ)) {
        rc = ins_error(ctx, INS_EINVAL, "Missing CRYPTO header for crypt method %"
                       PRIu32, st->crypt_method);
        goto fail;
    }
    st->base.virtual_size = (uint64_t)qemu_length(st);
    *out = &st->base;
    return INS_OK;
fail:
    qcow2_close(&st->base);
    return rc;
}

/* ---- info ---- */

static struct tree *bitmap_list(struct qcow2_image *st, struct tree_builder *tb)
{
    struct tree *list = tree_new_list(tb);
    uint32_t i;

    for (i = 0; i < st->nb_bitmaps; i++) {
        const struct qcow2_bitmap *bm = &st->bitmaps[i];
        struct tree *d = tree_append(tb, list, tree_new_dict(tb));
        struct tree *flags;

        tree_put_str(tb, d, "name", bm->name);
        tree_put_int(tb, d, "granularity", (int64_t)1 << bm->granularity_bits);
        flags = tree_put_list(tb, d, "flags");
        if (bm->flags & BME_FLAG_IN_USE)
            tree_append(tb, flags, tree_new_str(tb, "in-use"));
        if (bm->flags & BME_FLAG_AUTO)
            tree_append(tb, flags, tree_new_str(tb, "auto"));
    }
    return list;
}

/* ImageInfoSpecificQCow2, members in QAPI order, present as qemu's
 * qcow2_get_specific_info() makes them. */
static int format_specific(struct qcow2_image *st, struct tree_builder *tb,
                           struct tree *d)
{
    int v3 = st->version == 3;
    int rc;

    tree_put_str(tb, d, "compat", v3 ? "1.1" : "0.10");
    if (v3) {
        if (st->data_file)
            tree_put_str(tb, d, "data-file", st->data_file);
        /* With the data file unopened (qemu-img info), qemu still counts
         * an image with the data-file bit as having one. */
        if (st->incompatible_features & QCOW2_INCOMPAT_DATA_FILE)
            tree_put_bool(tb, d, "data-file-raw",
                          (st->autoclear_features & QCOW2_AUTOCLEAR_DATA_FILE_RAW) != 0);
        tree_put_bool(tb, d, "extended-l2", st->extended_l2);
        tree_put_bool(tb, d, "lazy-refcounts",
                      (st->compatible_features & QCOW2_COMPAT_LAZY_REFCOUNTS) != 0);
        tree_put_bool(tb, d, "corrupt",
                      (st->incompatible_features & QCOW2_INCOMPAT_CORRUPT) != 0);
    }
    tree_put_int(tb, d, "refcount-bits", (int64_t)1 << st->refcount_order);
    if (st->crypt_method == QCOW2_CRYPT_AES) {
        struct tree *enc = tree_put_dict(tb, d, "encrypt");

        tree_put_str(tb, enc, "format", "aes");
    } else if (st->crypt_method == QCOW2_CRYPT_LUKS && st->has_crypto_header) {
        struct tree *enc = tree_put_dict(tb, d, "encrypt");

        tree_put_str(tb, enc, "format", "luks");
        if (enc) {
            rc = luks_check(st, tb, enc);
            if (rc < 0)
                return rc;
        }
    }
    if (v3 && st->nb_bitmaps > 0)
        tree_put(tb, d, "bitmaps", bitmap_list(st, tb));
    tree_put_str(tb, d, "compression-type",
                 st->compression_type == QCOW2_COMPRESSION_ZSTD ? "zstd" : "zlib");
    return INS_OK;
}

static int qcow2_info(struct ins_image *img, struct tree_builder *tb,
                      struct ins_info *info)
{
    struct qcow2_image *st = (struct qcow2_image *)img;
    struct ins_ctx *ctx = img->ctx;
    int rc;

    info->virtual_size = img->virtual_size;
    info->has_cluster_size = 1;
    info->cluster_size = (int64_t)st->cluster_size;
    info->has_dirty_flag = 1;
    info->dirty_flag = (st->incompatible_features & QCOW2_INCOMPAT_DIRTY) != 0;
    info->encrypted = st->crypt_method != QCOW2_CRYPT_NONE;
    if (st->backing_file && st->backing_file[0]) {
        info->backing_filename = ins_strdup(ctx, st->backing_file);
        if (!info->backing_filename)
            return no_memory(ctx);
        if (st->backing_format) {
            info->backing_format = ins_strdup(ctx, st->backing_format);
            if (!info->backing_format)
                return no_memory(ctx);
        }
    }
    /* The snapshot list moves to info, which frees it. */
    info->has_snapshots = 1;
    info->snapshots = st->snapshots;
    info->n_snapshots = st->n_snapshots;
    st->snapshots = NULL;
    st->n_snapshots = 0;

    info->format_specific_type = "qcow2";
    info->format_specific = tree_new_dict(tb);
    if (!info->format_specific)
        return no_memory(ctx);
    rc = format_specific(st, tb, info->format_specific);
    if (rc < 0)
        return rc;
    return tb->failed ? no_memory(ctx) : INS_OK;
}

static int qcow2_backing(struct ins_image *img, const char **name,
                         const char **format)
{
    struct qcow2_image *st = (struct qcow2_image *)img;

    *name = st->backing_file;
    *format = st->backing_format;
    return INS_OK;
}

const struct ins_driver ins_drv_qcow2 = {
    .name = "qcow2",
    .probe = qcow2_probe,
    .open = qcow2_open,
    .info = qcow2_info,
    .close = qcow2_close,
    .backing = qcow2_backing,
    .supports_backing = 1,
    .block_status = qcow2_block_status,
    .read = qcow2_read,
    .plain_map = 1,
    .load_snapshot = qcow2_load_snapshot,
    .check = qcow2_check,
};

/*
 * vmdk.c - the vmdk format, opened as qemu's block/vmdk.c opens it.
 *
 * A vmdk image is either a sparse file that starts with a binary header
 * (VMDK4 "KDMV", or the older VMDK3 "COWD") and carries its own text
 * descriptor, or a text descriptor file that lists extents stored in
 * other files:
 *
 *     createType="twoGbMaxExtentSparse"
 *     RW 4192256 SPARSE "disk-s001.vmdk"
 *     RW 2048 FLAT "disk-flat.vmdk" 0
 *
 * qemu's parsing has sharp edges that decide what qemu-img prints, and we
 * follow them on purpose: extent lines are read with sscanf from every
 * line start (so a blank line before an extent line adds that extent
 * twice), lines that are not "RW" are silently skipped, a sparse file
 * with capacity 0 may hold a descriptor of further extents, CID and the
 * parent hint are found with strstr in the first 10 KiB of the
 * descriptor, and sizes use qemu's wrapping int64 arithmetic.
 *
 * Every extent file is opened through ctx->open_ref, so the host decides
 * which names may be followed.  Open never loads grain tables, it only
 * checks that qemu could read them; reads fetch one grain directory entry
 * and one grain table at a time (cached per extent), so memory stays
 * small however large the tables claim to be.
 */
#include "vmdk.h"
#include "fmt_check.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <zlib.h>

#define SECTOR 512u
#define DESC_SIZE (20 * 512)            /* what qemu reads for CID and hint */
#define DESC_MAX ((1u << 20) - 1)       /* qemu's cap on a descriptor read */
#define MAX_CLUSTER_SECTORS 0x200000u   /* 1 GiB grains: "Invalid granularity" */
#define MAX_L1_SIZE (32u * 1024 * 1024)
#define GD_AT_END UINT64_MAX
#define FLAG_RGD (1u << 1)
#define FLAG_ZERO_GRAIN (1u << 2)
#define FLAG_MARKER (1u << 17)
#define MARKER_EOS 0
#define MARKER_FOOTER 3
#define VMDK4_HEADER_LEN 75             /* the packed header after the magic */

/* qemu's BDRV_MAX_LENGTH: the largest offset a request may reach. */
#define MAX_LENGTH ((uint64_t)INT64_MAX & ~(((uint64_t)1 << 30) - 1))

/* Our own bounds, where qemu has none. */
#define MAX_EXTENTS 1024
#define MAX_NESTING 8                   /* sparse files holding descriptors */

enum { MAGIC_COWD = 0x434f5744, MAGIC_KDMV = 0x4b444d56 };

static int is_space(int c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' ||
           c == '\r';
}

/* ---- probing ---- */

/* qemu's rule: a binary magic, or "version=1|2|3" as the first line that
 * is neither a '#' comment nor made of spaces only. */
static int vmdk_probe(struct ins_ctx *ctx, struct ins_bdev *file,
                      const uint8_t *head, size_t head_len)
{
    const char *p = (const char *)head, *end = p + head_len;
    uint32_t magic;

    (void)ctx; (void)file;
    if (head_len < 4)
        return 0;
    magic = ins_be32(head);
    if (magic == MAGIC_COWD || magic == MAGIC_KDMV)
        return 100;
    while (p < end) {
        if (*p == '#') {
            while (p < end && *p != '\n')
                p++;
            p++;
            continue;
        }
        if (*p == ' ') {
            while (p < end && *p == ' ')
                p++;
            if (p < end && *p == '\r')
                p++;
            if (p == end || *p != '\n')
                return 0;
            p++;
            continue;
        }
        if (end - p >= 10 && memcmp(p, "version=", 8) == 0 &&
            p[8] >= '1' && p[8] <= '3' && p[9] == '\n')
            return 100;
        if (end - p >= 11 && memcmp(p, "version=", 8) == 0 &&
            p[8] >= '1' && p[8] <= '3' && p[9] == '\r' && p[10] == '\n')
            return 100;
        return 0;
    }
    return 0;
}

/* ---- reads with qemu's request checks ---- */

/* qemu refuses requests at negative offsets or past BDRV_MAX_LENGTH with
 * EIO; anything past end of file reads as zeros. */
static int request_ok(uint64_t offset, uint64_t bytes)
{
    return (int64_t)offset >= 0 && bytes <= MAX_LENGTH &&
           offset <= MAX_LENGTH - bytes;
}

static int read_checked(struct ins_bdev *bd, void *buf, size_t len,
                        uint64_t offset)
{
    if (!request_ok(offset, len))
        return INS_EIO;
    return ins_read_zfill(bd, buf, len, offset);
}

static uint64_t nb_sectors(const struct ins_bdev *bd)
{
    return bd->size / SECTOR + (bd->size % SECTOR != 0);
}

/* qemu sees a file's length in whole sectors, so only an empty file is
 * "too small" to hold a 4-byte magic. */
static int too_small(const struct ins_bdev *bd)
{
    return nb_sectors(bd) * SECTOR < 4;
}

static const char *bd_name(const struct ins_bdev *bd)
{
    return bd->name ? bd->name : "";
}

/* The generic failure qemu reports when a step fails without a message. */
static int einval(struct vmdk_image *s)
{
    return ins_error(s->base.ctx, INS_EINVAL, "Could not open '%s': Invalid argument",
                     bd_name(s->base.file));
}

/* qemu's vmdk_read_desc: up to 1 MiB - 1 bytes at offset, NUL-terminated. */
static int read_desc(struct vmdk_image *s, struct ins_bdev *bd,
                     uint64_t offset, char **out)
{
    struct ins_ctx *ctx = s->base.ctx;
    size_t size;
    char *buf;

    if (too_small(bd))
        return ins_error(ctx, INS_EINVAL, "File is too small, not a valid image");
    size = nb_sectors(bd) <= DESC_MAX / SECTOR ? (size_t)(nb_sectors(bd) * SECTOR)
                                               : DESC_MAX;
    buf = ins_malloc(ctx, size + 1);
    if (!buf)
        return ins_error(ctx, INS_ENOMEM, "Out of memory");
    if (read_checked(bd, buf, size, offset) < 0) {
        ins_free(ctx, buf);
        return ins_error(ctx, INS_EIO, "Could not read from file: Input/output error");
    }
    buf[size] = '\0';
    *out = buf;
    return INS_OK;
}

/* ---- extents ---- */

static int add_extent(struct vmdk_image *s, struct ins_bdev *bd, int flat,
                      int64_t sectors, uint64_t l1_offset,
                      uint64_t l1_backup_offset, uint32_t l1_size,
                      uint32_t l2_size, uint64_t cluster_sectors,
                      struct vmdk_extent **out)
{
    struct ins_ctx *ctx = s->base.ctx;
    struct vmdk_extent *e, *grown;
    uint64_t prev_end;

    if (cluster_sectors > MAX_CLUSTER_SECTORS)
        return ins_error(ctx, INS_EFBIG, "Invalid granularity, image may be corrupt");
    if (l1_size > MAX_L1_SIZE)
        return ins_error(ctx, INS_EFBIG, "L1 size too big");
    if (s->n_extents >= MAX_EXTENTS)
        return ins_error(ctx, INS_EFBIG, "VMDK image has more than %d extents",
                         MAX_EXTENTS);
    grown = ins_realloc(ctx, s->extents, (s->n_extents + 1) * sizeof(*grown));
    if (!grown)
        return ins_error(ctx, INS_ENOMEM, "Out of memory");
    s->extents = grown;
    prev_end = s->n_extents ? (uint64_t)grown[s->n_extents - 1].end_sector : 0;
    e = &grown[s->n_extents++];
    memset(e, 0, sizeof(*e));
    e->file = bd;
    e->flat = flat;
    e->sectors = sectors;
    /* qemu is built with -fwrapv: the sum wraps. */
    e->end_sector = (int64_t)(prev_end + (uint64_t)sectors);
    e->l1_table_offset = l1_offset;
    e->l1_backup_offset = l1_backup_offset;
    e->l1_size = l1_size;
    e->l2_size = l2_size;
    e->l1_entry_sectors = (uint32_t)((uint64_t)l2_size * cluster_sectors);
    e->cluster_sectors = flat ? sectors : (int64_t)cluster_sectors;
    e->entry_size = 4;
    *out = e;
    return INS_OK;
}

/* qemu reads the grain directory (and its backup) at open; the only way
 * that read fails on a regular file is a request qemu refuses. */
static int check_tables(struct vmdk_image *s, const struct vmdk_extent *e)
{
    uint64_t bytes = (uint64_t)e->l1_size * (uint64_t)e->entry_size;

    if (!request_ok(e->l1_table_offset, bytes))
        return ins_error(s->base.ctx, INS_EIO,
                         "Could not read l1 table from extent '%s': Input/output error",
                         bd_name(e->file));
    if (e->l1_backup_offset && !request_ok(e->l1_backup_offset, bytes))
        return ins_error(s->base.ctx, INS_EIO,
                         "Could not read l1 backup table from extent '%s': "
                         "Input/output error", bd_name(e->file));
    return INS_OK;
}

static int set_create_type(struct vmdk_image *s, const char *type)
{
    char *copy = ins_strdup(s->base.ctx, type);

    if (!copy)
        return ins_error(s->base.ctx, INS_ENOMEM, "Out of memory");
    ins_free(s->base.ctx, s->create_type);
    s->create_type = copy;
    return INS_OK;
}

static int open_desc_file(struct vmdk_image *s, const char *buf, int depth);

/* VMDK3 ("COWD"): qemu's vmdk_open_vmfs_sparse. */
static int open_cowd(struct vmdk_image *s, struct ins_bdev *bd, int is_image_file)
{
    struct vmdk_extent *e;
    uint8_t h[40];
    int rc;

    if ((rc = ins_read_zfill(bd, h, sizeof(h), 4)) < 0)
        return ins_error(s->base.ctx, rc, "Could not read header from file '%s'",
                         bd_name(bd));
    /* version, flags, disk_sectors, granularity, l1dir_offset, l1dir_size */
    rc = add_extent(s, bd, 0, (int64_t)ins_le32(h + 8),
                    (uint64_t)ins_le32(h + 16) << 9, 0, ins_le32(h + 20),
                    4096, ins_le32(h + 12), &e);
    if (rc < 0)
        return rc;
    e->is_image_file = is_image_file;
    return check_tables(s, e);
}

/* The streamOptimized footer: a footer marker, a copy of the header with
 * the real grain directory offset, and an end-of-stream marker. */
static int read_footer(struct vmdk_image *s, struct ins_bdev *bd, uint8_t *h)
{
    uint8_t f[1536];
    /* qemu takes the offset from the image's own file even when bd is an
     * extent named by a descriptor; we do the same. */
    uint64_t off = nb_sectors(s->base.file) * SECTOR - 1536;

    if (read_checked(bd, f, sizeof(f), off) < 0)
        return ins_error(s->base.ctx, INS_EIO, "Failed to read footer: Input/output error");
    if (ins_be32(f + 512) != MAGIC_KDMV || ins_le32(f + 8) != 0 ||
        ins_le32(f + 12) != MARKER_FOOTER || ins_le64(f + 1024) != 0 ||
        ins_le32(f + 1032) != 0 || ins_le32(f + 1036) != MARKER_EOS)
        return ins_error(s->base.ctx, INS_EINVAL, "Invalid footer");
    memcpy(h, f + 516, VMDK4_HEADER_LEN);
    return INS_OK;
}

/* VMDK4 ("KDMV"): qemu's vmdk_open_vmdk4. */
static int open_vmdk4(struct vmdk_image *s, struct ins_bdev *bd, int depth,
                      int is_image_file)
{
    struct ins_ctx *ctx = s->base.ctx;
    uint8_t h[VMDK4_HEADER_LEN];
    uint64_t capacity, granularity, grain_offset, gd_offset, backup = 0;
    uint32_t version, flags, gtes, l1_entry_sectors, l1_size;
    struct vmdk_extent *e;
    int compressed, rc;

    if ((rc = ins_read_zfill(bd, h, sizeof(h), 4)) < 0)
        return ins_error(ctx, rc, "Could not read header from file '%s'", bd_name(bd));
    if (ins_le64(h + 8) == 0 && ins_le64(h + 24) != 0) {
        /* No data of its own: the embedded descriptor lists the extents. */
        char *buf;

        if (depth >= MAX_NESTING)
            return ins_error(ctx, INS_EINVAL,
                             "VMDK descriptors nested more than %d deep", MAX_NESTING);
        if ((rc = read_desc(s, bd, ins_le64(h + 24) << 9, &buf)) < 0)
            return rc;
        rc = open_desc_file(s, buf, depth + 1);
        ins_free(ctx, buf);
        return rc;
    }
    if (!s->create_type && (rc = set_create_type(s, "monolithicSparse")) < 0)
        return rc;
    if (ins_le64(h + 52) == GD_AT_END && (rc = read_footer(s, bd, h)) < 0)
        return rc;

    version = ins_le32(h);
    flags = ins_le32(h + 4);
    capacity = ins_le64(h + 8);
    granularity = ins_le64(h + 16);
    gtes = ins_le32(h + 40);
    gd_offset = ins_le64(h + 52);
    grain_offset = ins_le64(h + 60);
    compressed = ins_le16(h + 73) == 1;     /* deflate */

    /* Version 3 is refused only for writing. */
    if (version > 3)
        return ins_error(ctx, INS_ENOTSUP, "Unsupported VMDK version %" PRIu32, version);
    if (gtes > 512)
        return ins_error(ctx, INS_EINVAL, "L2 table size too big");
    /* qemu's uint32_t arithmetic, truncation included. */
    l1_entry_sectors = (uint32_t)(gtes * granularity);
    if (l1_entry_sectors == 0)
        return ins_error(ctx, INS_EINVAL, "L1 entry size is invalid");
    l1_size = (uint32_t)((capacity + l1_entry_sectors - 1) / l1_entry_sectors);
    if (flags & FLAG_RGD)
        backup = ins_le64(h + 44) << 9;
    if (nb_sectors(bd) < grain_offset)
        return ins_error(ctx, INS_EINVAL, "File truncated, expecting at least %" PRId64
                         " bytes", (int64_t)(grain_offset * SECTOR));
    rc = add_extent(s, bd, 0, (int64_t)capacity, gd_offset << 9, backup, l1_size,
                    gtes, granularity, &e);
    if (rc < 0)
        return rc;
    e->compressed = compressed;
    e->has_marker = (flags & FLAG_MARKER) != 0;
    e->has_zero_grain = (flags & FLAG_ZERO_GRAIN) != 0;
    e->version = version;
    e->is_image_file = is_image_file;
    if (compressed && (rc = set_create_type(s, "streamOptimized")) < 0)
        return rc;
    return check_tables(s, e);
}

/* seSparse (ESXi 6.5+): qemu's vmdk_open_se_sparse, strict as qemu is. */
static int open_sesparse(struct vmdk_image *s, struct ins_bdev *bd)
{
    struct ins_ctx *ctx = s->base.ctx;
    uint8_t c[512], v[512];
    uint64_t voff;
    struct vmdk_extent *e;
    size_t i;
    int rc;

    if ((rc = ins_read_zfill(bd, c, sizeof(c), 0)) < 0)
        return ins_error(ctx, rc, "Could not read const header from file '%s'",
                         bd_name(bd));
    if (ins_le64(c) != 0xcafebabe)
        return ins_error(ctx, INS_EINVAL, "Bad const header magic: 0x%016" PRIx64,
                         ins_le64(c));
    if (ins_le64(c + 8) != 0x0000000200000001ULL)
        return ins_error(ctx, INS_ENOTSUP, "Unsupported version: 0x%016" PRIx64,
                         ins_le64(c + 8));
    if (ins_le64(c + 24) != 8)
        return ins_error(ctx, INS_ENOTSUP, "Unsupported grain size: %" PRIu64,
                         ins_le64(c + 24));
    if (ins_le64(c + 32) != 64)
        return ins_error(ctx, INS_ENOTSUP, "Unsupported grain table size: %" PRIu64,
                         ins_le64(c + 32));
    if (ins_le64(c + 40) != 0)
        return ins_error(ctx, INS_ENOTSUP, "Unsupported flags: 0x%016" PRIx64,
                         ins_le64(c + 40));
    if (ins_le64(c + 48) || ins_le64(c + 56) || ins_le64(c + 64) || ins_le64(c + 72))
        return ins_error(ctx, INS_ENOTSUP, "Unsupported reserved bits: 0x%016" PRIx64
                         " 0x%016" PRIx64 " 0x%016" PRIx64 " 0x%016" PRIx64,
                         ins_le64(c + 48), ins_le64(c + 56), ins_le64(c + 64),
                         ins_le64(c + 72));
    for (i = 208; i < sizeof(c); i++)
        if (c[i])
            return ins_error(ctx, INS_ENOTSUP, "Unsupported non-zero const header padding");

    voff = ins_le64(c + 80) * SECTOR;
    if (read_checked(bd, v, sizeof(v), voff) < 0)
        return ins_error(ctx, INS_EIO, "Could not read volatile header from file '%s': "
                         "Input/output error", bd_name(bd));
    if (ins_le64(v) != 0xcafecafe)
        return ins_error(ctx, INS_EINVAL, "Bad volatile header magic: 0x%016" PRIx64,
                         ins_le64(v));
    if (ins_le64(v + 24))
        return ins_error(ctx, INS_ENOTSUP, "Image is dirty, Replaying journal not supported");
    for (i = 32; i < sizeof(v); i++)
        if (v[i])
            return ins_error(ctx, INS_ENOTSUP, "Unsupported non-zero volatile header padding");

    rc = add_extent(s, bd, 0, (int64_t)ins_le64(c + 16), ins_le64(c + 128) * SECTOR, 0,
                    (uint32_t)(ins_le64(c + 136) * SECTOR / 8), 64 * SECTOR / 8,
                    ins_le64(c + 24), &e);
    if (rc < 0)
        return rc;
    e->sesparse = 1;
    e->sesparse_l2_tables_offset = ins_le64(c + 144);
    e->sesparse_clusters_offset = ins_le64(c + 192);
    e->entry_size = 8;
    return check_tables(s, e);
}

/* A sparse extent named by a descriptor: COWD or KDMV. */
static int open_sparse_extent(struct vmdk_image *s, struct ins_bdev *bd, int depth)
{
    uint8_t m[4];
    int rc;

    if (too_small(bd))
        return ins_error(s->base.ctx, INS_EINVAL, "File is too small, not a valid image");
    if ((rc = ins_read_zfill(bd, m, 4, 0)) < 0)
        return ins_error(s->base.ctx, rc, "Could not read from file: Input/output error");
    switch (ins_be32(m)) {
    case MAGIC_COWD:
        return open_cowd(s, bd, 0);
    case MAGIC_KDMV:
        return open_vmdk4(s, bd, depth, 0);
    default:
        return ins_error(s->base.ctx, INS_EINVAL, "Image not in VMDK format");
    }
}

/* ---- the text descriptor ---- */

/* qemu's vmdk_parse_description: the quoted value after `name="`. */
static int desc_value(const char *desc, const char *name, char *out, size_t outlen)
{
    const char *pos = strstr(desc, name), *end = desc + strlen(desc), *q;

    if (!pos)
        return -1;
    pos += strlen(name) + 2;
    if (pos >= end)
        return -1;
    q = memchr(pos, '"', (size_t)(end - pos));
    if (!q || outlen < (size_t)(q - pos) + 1)
        return -1;
    memcpy(out, pos, (size_t)(q - pos));
    out[q - pos] = '\0';
    return 0;
}

/* What qemu's
 *   sscanf(p, "%10s %" SCNd64 " %10s \"%511[^\n\r\"]\" %" SCNd64, ...)
 * yields: glibc's rules for white space, numbers and scansets. */
struct ext_line {
    int matches;
    char access[11];
    int64_t sectors;
    char type[11];
    char fname[512];
    int64_t offset;
};

static const char *skip_space(const char *s)
{
    while (is_space((unsigned char)*s))
        s++;
    return s;
}

static int scan_word(const char **sp, char *out, size_t max)
{
    const char *s = skip_space(*sp);
    size_t n = 0;

    while (s[n] && !is_space((unsigned char)s[n]) && n < max) {
        out[n] = s[n];
        n++;
    }
    out[n] = '\0';
    *sp = s + n;
    return n > 0;
}

/* %ld: strtol's value, saturated on overflow. */
static int scan_int64(const char **sp, int64_t *out)
{
    const char *s = skip_space(*sp);
    uint64_t v = 0, limit;
    int neg = 0, overflow = 0;

    if (*s == '+' || *s == '-')
        neg = *s++ == '-';
    if (*s < '0' || *s > '9')
        return 0;
    limit = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
    for (; *s >= '0' && *s <= '9'; s++) {
        unsigned d = (unsigned)(*s - '0');

        if (overflow || v > (limit - d) / 10)
            overflow = 1;
        else
            v = v * 10 + d;
    }
    if (overflow)
        v = limit;
    *out = neg ? (int64_t)(0 - v) : (int64_t)v;
    *sp = s;
    return 1;
}

static void scan_extent_line(const char *s, struct ext_line *l)
{
    size_t n = 0;

    l->matches = 0;
    l->offset = -1;
    if (!scan_word(&s, l->access, 10))
        return;
    l->matches++;
    if (!scan_int64(&s, &l->sectors))
        return;
    l->matches++;
    if (!scan_word(&s, l->type, 10))
        return;
    l->matches++;
    s = skip_space(s);
    if (*s != '"')
        return;
    s++;
    while (s[n] && s[n] != '\n' && s[n] != '\r' && s[n] != '"' && n < 511) {
        l->fname[n] = s[n];
        n++;
    }
    if (n == 0)
        return;
    l->fname[n] = '\0';
    l->matches++;
    s += n;
    if (*s != '"')
        return;
    s++;
    if (scan_int64(&s, &l->offset))
        l->matches++;
}

static const char *next_line(const char *s)
{
    const char *nl = strchr(s, '\n');

    return nl ? nl + 1 : s + strlen(s);
}

/*
 * The file behind an extent name.  qemu opens a new node per extent line;
 * we open each distinct name once through the host's policy and share it
 * (a descriptor may list one file twice, or even itself).  Each use is
 * still a child of its own, named as qemu names it.
 */
static int extent_file(struct vmdk_image *s, const char *fname,
                       struct ins_bdev **out)
{
    struct ins_ctx *ctx = s->base.ctx;
    struct ins_bdev *bd = NULL;
    struct vmdk_file *grown;
    char *path = ins_path_combine(ctx, bd_name(s->base.file), fname);
    size_t i;
    int rc;

    if (!path)
        return ins_error(ctx, INS_ENOMEM, "Out of memory");
    for (i = 0; i < s->n_files && !bd; i++)
        if (strcmp(s->files[i].path, path) == 0)
            bd = s->files[i].bd;
    if (!bd && strcmp(path, bd_name(s->base.file)) == 0)
        bd = s->base.file;
    if (s->n_files >= MAX_EXTENTS) {
        ins_free(ctx, path);
        return ins_error(ctx, INS_EFBIG, "VMDK image has more than %d extents",
                         MAX_EXTENTS);
    }
    if (!bd) {
        rc = ctx->open_ref(ctx, INS_REF_EXTENT, bd_name(s->base.file), fname, &bd);
        if (rc < 0) {
            ins_free(ctx, path);
            return rc;
        }
    }
    grown = ins_realloc(ctx, s->files, (s->n_files + 1) * sizeof(*grown));
    if (!grown) {
        ins_free(ctx, path);
        return ins_error(ctx, INS_ENOMEM, "Out of memory");
    }
    s->files = grown;
    /* qemu numbers the child by the extents added so far. */
    snprintf(grown[s->n_files].name, sizeof(grown[s->n_files].name),
             "extents.%zu", s->n_extents);
    grown[s->n_files].path = path;
    grown[s->n_files].bd = bd;
    s->n_files++;
    *out = bd;
    return INS_OK;
}

static int invalid_line(struct vmdk_image *s, const char *p)
{
    const char *np = next_line(p);

    if (np > p && np[-1] == '\n')
        np--;
    return ins_error(s->base.ctx, INS_EINVAL, "Invalid extent line: %.*s",
                     (int)(np - p), p);
}

static int is_known_type(const char *t)
{
    return !strcmp(t, "FLAT") || !strcmp(t, "SPARSE") || !strcmp(t, "VMFS") ||
           !strcmp(t, "VMFSSPARSE") || !strcmp(t, "SESPARSE");
}

/* One RW extent line, already validated. */
static int add_listed_extent(struct vmdk_image *s, const struct ext_line *l,
                             int depth)
{
    struct vmdk_extent *e;
    struct ins_bdev *bd = NULL;
    int rc;

    if ((rc = extent_file(s, l->fname, &bd)) < 0)
        return rc;
    if (!strcmp(l->type, "FLAT") || !strcmp(l->type, "VMFS")) {
        rc = add_extent(s, bd, 1, l->sectors, 0, 0, 0, 0, 0, &e);
        if (rc < 0)
            return rc;
        e->flat_start_offset = (uint64_t)l->offset << 9;
    } else if (!strcmp(l->type, "SESPARSE")) {
        if ((rc = open_sesparse(s, bd)) < 0)
            return rc;
    } else if ((rc = open_sparse_extent(s, bd, depth)) < 0) {
        return rc;
    }
    /* Like qemu, label the last extent: after a nested descriptor that is
     * not the one this line opened. */
    if (s->n_extents)
        memcpy(s->extents[s->n_extents - 1].type, l->type, sizeof(l->type));
    return INS_OK;
}

/* qemu's vmdk_parse_extents. */
static int parse_extents(struct vmdk_image *s, const char *desc, int depth)
{
    const char *p, *ws_from = NULL, *ws_to = NULL, *parsed_at = NULL;
    struct ext_line l;
    int rc;

    memset(&l, 0, sizeof(l));
    for (p = desc; *p; p = next_line(p)) {
        const char *q = p;

        /* sscanf skips white space, newlines included, so a line that
         * starts with it parses whatever follows.  Remember the skip and
         * the parse so that many blank lines cost linear time. */
        if (is_space((unsigned char)*p)) {
            if (!(ws_to && p >= ws_from && p < ws_to)) {
                ws_from = p;
                ws_to = skip_space(p);
            }
            q = ws_to;
        }
        if (q != parsed_at) {
            scan_extent_line(q, &l);
            parsed_at = q;
        }
        if (l.matches < 4 || strcmp(l.access, "RW"))
            continue;
        if (!strcmp(l.type, "FLAT")) {
            if (l.matches != 5 || l.offset < 0)
                return invalid_line(s, p);
        } else if (!strcmp(l.type, "VMFS")) {
            if (l.matches != 4)
                return invalid_line(s, p);
        } else if (l.matches != 4) {
            return invalid_line(s, p);
        }
        if (l.sectors <= 0 || !is_known_type(l.type))
            continue;
        {
            struct ext_line one = l;

            if (!strcmp(one.type, "VMFS"))
                one.offset = 0;
            if ((rc = add_listed_extent(s, &one, depth)) < 0)
                return rc;
        }
    }
    return INS_OK;
}

/* qemu's vmdk_open_desc_file. */
static int open_desc_file(struct vmdk_image *s, const char *buf, int depth)
{
    static const char *const types[] = {
        "monolithicFlat", "vmfs", "vmfsSparse", "seSparse",
        "twoGbMaxExtentSparse", "twoGbMaxExtentFlat", NULL,
    };
    char ct[128];
    size_t i;
    int rc;

    if (desc_value(buf, "createType", ct, sizeof(ct)) < 0)
        return ins_error(s->base.ctx, INS_EINVAL, "invalid VMDK image descriptor");
    for (i = 0; types[i] && strcmp(ct, types[i]); i++)
        ;
    if (!types[i])
        return ins_error(s->base.ctx, INS_ENOTSUP, "Unsupported image type '%s'", ct);
    if ((rc = set_create_type(s, ct)) < 0)
        return rc;
    s->desc_offset = 0;
    return parse_extents(s, buf, depth);
}

/* ---- CID and parent ---- */

/* sscanf "%x" into a uint32_t: strtoul's value, truncated. */
static int scan_hex32(const char *s, uint32_t *out)
{
    uint64_t v = 0;
    int neg = 0, digits = 0, overflow = 0;

    s = skip_space(s);
    if (*s == '+' || *s == '-')
        neg = *s++ == '-';
    if (s[0] == '0') {
        digits = 1;     /* "0x" with no hex digit after it still reads 0 */
        s++;
        if (*s == 'x' || *s == 'X')
            s++;
    }
    for (;; s++) {
        unsigned d;

        if (*s >= '0' && *s <= '9')
            d = (unsigned)(*s - '0');
        else if (*s >= 'a' && *s <= 'f')
            d = (unsigned)(*s - 'a' + 10);
        else if (*s >= 'A' && *s <= 'F')
            d = (unsigned)(*s - 'A' + 10);
        else
            break;
        digits = 1;
        if (v >> 60)
            overflow = 1;
        v = v << 4 | d;
    }
    if (!digits)
        return -1;
    if (overflow)
        v = UINT64_MAX;
    else if (neg)
        v = 0 - v;
    *out = (uint32_t)v;
    return 0;
}

static int read_cid(struct vmdk_image *s, int parent, uint32_t *cid)
{
    const char *key = parent ? "parentCID" : "CID";
    char *desc = ins_malloc(s->base.ctx, DESC_SIZE);
    const char *p;
    int rc = INS_OK;

    if (!desc)
        return ins_error(s->base.ctx, INS_ENOMEM, "Out of memory");
    if (read_checked(s->base.file, desc, DESC_SIZE, s->desc_offset) < 0) {
        ins_free(s->base.ctx, desc);
        return einval(s);
    }
    desc[DESC_SIZE - 1] = '\0';
    p = strstr(desc, key);
    if (!p || scan_hex32(p + strlen(key) + 1, cid) < 0)
        rc = einval(s);
    ins_free(s->base.ctx, desc);
    return rc;
}

/* qemu's vmdk_parent_open: parentFileNameHint="NAME" names the backing
 * file (a vmdk, by qemu's decree). */
static int read_parent(struct vmdk_image *s)
{
    static const char key[] = "parentFileNameHint";
    char *desc = ins_calloc(s->base.ctx, 1, DESC_SIZE + 1);
    const char *p, *end;
    int rc = INS_OK;

    if (!desc)
        return ins_error(s->base.ctx, INS_ENOMEM, "Out of memory");
    if (read_checked(s->base.file, desc, DESC_SIZE, s->desc_offset) < 0) {
        ins_free(s->base.ctx, desc);
        return einval(s);
    }
    p = strstr(desc, key);
    if (p) {
        /* Skip the key, '=' and '"' without checking them, as qemu does;
         * past the buffer there is no closing quote. */
        size_t at = (size_t)(p - desc) + sizeof(key) + 1;

        end = at <= DESC_SIZE ? strchr(desc + at, '"') : NULL;
        if (!end || (size_t)(end - (desc + at)) > 4095) {
            rc = einval(s);
        } else {
            s->backing = ins_strndup(s->base.ctx, desc + at, (size_t)(end - (desc + at)));
            if (!s->backing)
                rc = ins_error(s->base.ctx, INS_ENOMEM, "Out of memory");
        }
    }
    ins_free(s->base.ctx, desc);
    return rc;
}

/* ---- open / info / close ---- */

static void vmdk_close(struct ins_image *img)
{
    struct vmdk_image *s = (struct vmdk_image *)img;
    struct ins_ctx *ctx;
    size_t i;

    if (!s)
        return;
    ctx = s->base.ctx;
    for (i = 0; i < s->n_files; i++)
        ins_free(ctx, s->files[i].path);
    for (i = 0; i < s->n_extents; i++)
        ins_free(ctx, s->extents[i].l2_cache);
    ins_free(ctx, s->files);
    ins_free(ctx, s->extents);
    ins_free(ctx, s->create_type);
    ins_free(ctx, s->backing);
    ins_free(ctx, s);
}

/* strerror() text without locale lookups, for the few errno values a
 * size can turn into (qemu passes a negative length on as an errno). */
static const char *errno_text(int e, char *buf, size_t len)
{
    switch (e) {
    case 5: return "Input/output error";
    case 22: return "Invalid argument";
    case 27: return "File too large";
    }
    {
        const char *d = strerrordesc_np(e);

        if (d)
            return d;
    }
    snprintf(buf, len, "Unknown error %d", e);
    return buf;
}

/* The checks qemu applies to the total after open, and qemu-img info's
 * "Can't get image size" for totals bdrv_getlength() cannot express. */
static int check_total(struct vmdk_image *s, int64_t total)
{
    struct ins_ctx *ctx = s->base.ctx;
    char buf[32];

    if ((uint64_t)total * SECTOR > MAX_LENGTH)
        return ins_error(ctx, INS_EFBIG, "Could not refresh total sector count: "
                         "File too large");
    if (total < 0) {
        /* bdrv_getlength() returns the negative count as an error. */
        int e = (int)(uint32_t)(0 - (uint64_t)total);

        if (e == 0)
            return ins_error_plain(ctx, INS_EFBIG, "Can't get image size '%s'",
                             bd_name(s->base.file));
        return ins_error_plain(ctx, INS_EFBIG, "Can't get image size '%s': %s",
                         bd_name(s->base.file), errno_text(e, buf, sizeof(buf)));
    }
    if (total > INT64_MAX / (int64_t)SECTOR)
        return ins_error_plain(ctx, INS_EFBIG, "Can't get image size '%s': File too large",
                         bd_name(s->base.file));
    return INS_OK;
}

static int vmdk_open(struct ins_ctx *ctx, struct ins_bdev *file,
                     unsigned flags, struct ins_image **out)
{
    struct vmdk_image *s = ins_calloc(ctx, 1, sizeof(*s));
    int64_t total;
    uint8_t m[4];
    int rc;

    (void)flags;
    if (!s)
        return ins_error(ctx, INS_ENOMEM, "Out of memory");
    s->base.drv = &ins_drv_vmdk;
    s->base.ctx = ctx;
    s->base.file = file;

    if (too_small(file)) {
        rc = ins_error(ctx, INS_EINVAL, "File is too small, not a valid image");
        goto fail;
    }
    if ((rc = ins_read_zfill(file, m, 4, 0)) < 0) {
        rc = ins_error(ctx, rc, "Could not read from file: Input/output error");
        goto fail;
    }
    if (ins_be32(m) == MAGIC_COWD) {
        rc = open_cowd(s, file, 1);
        s->desc_offset = 512;
    } else if (ins_be32(m) == MAGIC_KDMV) {
        rc = open_vmdk4(s, file, 0, 1);
        s->desc_offset = 512;
    } else {
        char *buf;

        if ((rc = read_desc(s, file, 0, &buf)) == INS_OK) {
            rc = open_desc_file(s, buf, 0);
            ins_free(ctx, buf);
        }
    }
    if (rc < 0)
        goto fail;
    if ((rc = read_parent(s)) < 0 || (rc = read_cid(s, 0, &s->cid)) < 0 ||
        (rc = read_cid(s, 1, &s->parent_cid)) < 0)
        goto fail;

    total = s->n_extents ? s->extents[s->n_extents - 1].end_sector : 0;
    if ((rc = check_total(s, total)) < 0)
        goto fail;
    if (s->n_extents == 0) {
        /* qemu-img opens this and then aborts on an assertion. */
        rc = ins_error(ctx, INS_EINVAL, "VMDK descriptor lists no usable extent");
        goto fail;
    }
    if (1 + s->n_files > INS_MAX_CHILDREN) {
        rc = ins_error(ctx, INS_EFBIG, "VMDK image has more than %d extent files",
                       INS_MAX_CHILDREN - 1);
        goto fail;
    }
    s->base.virtual_size = (uint64_t)total * SECTOR;
    *out = &s->base;
    return INS_OK;
fail:
    vmdk_close(&s->base);
    return rc;
}

/* qemu's vmdk_extents_type_eq. */
static int same_kind(const struct vmdk_extent *a, const struct vmdk_extent *b)
{
    return a->flat == b->flat && a->compressed == b->compressed &&
           (a->flat || a->cluster_sectors == b->cluster_sectors);
}

static void put_extents(struct vmdk_image *s, struct tree_builder *tb,
                        struct tree *d)
{
    struct tree *list = tree_put_list(tb, d, "extents");
    size_t i;

    for (i = 0; i < s->n_extents; i++) {
        const struct vmdk_extent *e = &s->extents[i];
        struct tree *x = tree_append(tb, list, tree_new_dict(tb));

        tree_put_str(tb, x, "filename", bd_name(e->file));
        tree_put_str(tb, x, "format", e->type);
        tree_put_int(tb, x, "virtual-size", (int64_t)((uint64_t)e->sectors * SECTOR));
        if (!e->flat)
            tree_put_int(tb, x, "cluster-size",
                         (int64_t)((uint64_t)e->cluster_sectors * SECTOR));
        if (e->compressed)
            tree_put_bool(tb, x, "compressed", 1);
    }
}

static int vmdk_info(struct ins_image *img, struct tree_builder *tb,
                     struct ins_info *info)
{
    struct vmdk_image *s = (struct vmdk_image *)img;
    struct ins_ctx *ctx = img->ctx;
    uint64_t actual = img->file->allocated;
    struct tree *d;
    size_t i;

    info->virtual_size = img->virtual_size;

    /* vmdk_co_get_info: a cluster size only when all extents agree. */
    for (i = 1; i < s->n_extents; i++)
        if (!same_kind(&s->extents[0], &s->extents[i]))
            break;
    if (i == s->n_extents) {
        info->has_dirty_flag = 1;
        if (!s->extents[0].flat && s->extents[0].cluster_sectors != 0) {
            info->has_cluster_size = 1;
            info->cluster_size = s->extents[0].cluster_sectors * (int64_t)SECTOR;
        }
    }

    /* vmdk_co_get_allocated_file_size: the image file plus every extent's
     * file, counted once per extent. */
    for (i = 0; i < s->n_extents; i++)
        if (!s->extents[i].is_image_file)
            actual += s->extents[i].file->allocated;
    info->has_actual_size = 1;
    info->actual_size = actual > INT64_MAX ? INT64_MAX : (int64_t)actual;

    if (s->backing) {
        info->backing_filename = ins_strdup(ctx, s->backing);
        info->backing_format = ins_strdup(ctx, "vmdk");
        if (!info->backing_filename || !info->backing_format)
            return ins_error(ctx, INS_ENOMEM, "Out of memory");
    }

    d = tree_new_dict(tb);
    tree_put_str(tb, d, "create-type", s->create_type ? s->create_type : "");
    tree_put_int(tb, d, "cid", s->cid);
    tree_put_int(tb, d, "parent-cid", s->parent_cid);
    put_extents(s, tb, d);
    info->format_specific_type = "vmdk";
    info->format_specific = d;

    info->children[0].name = ins_strdup(ctx, "file");
    info->children[0].bdev = img->file;
    info->n_children = 1;
    if (!info->children[0].name)
        return ins_error(ctx, INS_ENOMEM, "Out of memory");
    for (i = 0; i < s->n_files && info->n_children < INS_MAX_CHILDREN; i++) {
        struct ins_child *c = &info->children[info->n_children++];

        c->name = ins_strdup(ctx, s->files[i].name);
        c->bdev = s->files[i].bd;
        if (!c->name)
            return ins_error(ctx, INS_ENOMEM, "Out of memory");
    }
    return tb->failed ? ins_error(ctx, INS_ENOMEM, "Out of memory") : INS_OK;
}

/* ---- reading ---- */

/* get_cluster_offset()'s answers. */
enum { CL_OK, CL_UNALLOC, CL_ZEROED, CL_ERROR };

#define MAX_COMPRESSED_GRAIN (64u << 20)    /* our bound on inflate buffers */

/* The extent holding guest sector `sector`, as qemu's find_extent(). */
static struct vmdk_extent *find_extent(struct vmdk_image *s, uint64_t sector)
{
    size_t i;

    for (i = 0; i < s->n_extents; i++)
        if ((int64_t)sector < s->extents[i].end_sector)
            return &s->extents[i];
    return NULL;
}

static uint64_t extent_start(const struct vmdk_extent *e)
{
    return (uint64_t)(e->end_sector - e->sectors) * SECTOR;
}

/* qemu holds the whole grain directory in memory; we read the entry we
 * need (the open checks made sure qemu could read the table). */
static int l1_entry(struct vmdk_extent *e, uint32_t index, uint64_t *out)
{
    uint8_t b[8];
    int rc;

    if (!e->l1_cached || e->l1_cached_index != index) {
        rc = ins_read_zfill(e->file, b, (size_t)e->entry_size,
                            e->l1_table_offset + (uint64_t)index * (uint64_t)e->entry_size);
        if (rc < 0)
            return rc;
        e->l1_cached_value = e->entry_size == 8 ? ins_le64(b) : ins_le32(b);
        e->l1_cached_index = index;
        e->l1_cached = 1;
    }
    *out = e->l1_cached_value;
    return INS_OK;
}

static int load_l2(struct vmdk_image *s, struct vmdk_extent *e, uint32_t l2_offset)
{
    size_t bytes = (size_t)e->l2_size * (size_t)e->entry_size;
    int rc;

    if (e->l2_cached_offset == l2_offset && e->l2_cache)
        return INS_OK;
    if (!e->l2_cache) {
        e->l2_cache = ins_malloc(s->base.ctx, bytes);
        if (!e->l2_cache)
            return ins_error(s->base.ctx, INS_ENOMEM, "Out of memory");
    }
    e->l2_cached_offset = 0;
    rc = ins_read_zfill(e->file, e->l2_cache, bytes, (uint64_t)l2_offset * SECTOR);
    if (rc < 0)
        return rc;
    e->l2_cached_offset = l2_offset;
    return INS_OK;
}

/* qemu's get_cluster_offset() without allocation: where guest byte
 * `offset` of extent e lives.  Returns CL_* or a negative INS_E*. */
static int get_cluster(struct vmdk_image *s, struct vmdk_extent *e,
                       uint64_t offset, uint64_t *cluster_offset, int *empty_l1)
{
    uint64_t rel, l1v, cs;
    uint32_t l1_index, l2_offset, l2_index;
    int zeroed = 0, rc;

    if (empty_l1)
        *empty_l1 = 0;
    if (e->flat) {
        *cluster_offset = e->flat_start_offset;
        return CL_OK;
    }
    /* qemu divides by these; a corrupt header could make them zero. */
    if (e->l1_entry_sectors == 0 || e->cluster_sectors <= 0 || e->l2_size == 0)
        return CL_ERROR;
    rel = offset - extent_start(e);
    l1_index = (uint32_t)((rel >> 9) / e->l1_entry_sectors);
    if (l1_index >= e->l1_size)
        return CL_ERROR;
    if ((rc = l1_entry(e, l1_index, &l1v)) < 0)
        return rc;
    if (e->sesparse) {
        if (l1v == 0) {
            l2_offset = 0;
        } else if ((l1v & 0xffffffff00000000ULL) != 0x1000000000000000ULL) {
            return CL_ERROR;
        } else {
            l1v = e->sesparse_l2_tables_offset +
                  (l1v & 0xffffffffULL) * (e->l2_size * (uint64_t)e->entry_size) / SECTOR;
            if (l1v > 0xffffffffULL)
                return CL_ERROR;
            l2_offset = (uint32_t)l1v;
        }
    } else {
        l2_offset = (uint32_t)l1v;
    }
    if (!l2_offset) {
        if (empty_l1)
            *empty_l1 = 1;
        return CL_UNALLOC;
    }
    if ((rc = load_l2(s, e, l2_offset)) < 0)
        return rc;
    l2_index = (uint32_t)(((rel >> 9) / (uint64_t)e->cluster_sectors) % e->l2_size);
    if (e->sesparse) {
        cs = ins_le64(e->l2_cache + (size_t)l2_index * 8);
        switch (cs >> 60) {
        case 0:
            if (cs != 0)
                return CL_ERROR;
            break;
        case 1:         /* unmapped */
        case 2:         /* zero */
            zeroed = 1;
            break;
        case 3:
            cs = ((cs & 0x0fff000000000000ULL) >> 48) |
                 ((cs & 0x0000ffffffffffffULL) << 12);
            cs = e->sesparse_clusters_offset + cs * (uint64_t)e->cluster_sectors;
            break;
        default:
            return CL_ERROR;
        }
    } else {
        cs = ins_le32(e->l2_cache + (size_t)l2_index * 4);
        if (e->has_zero_grain && cs == 1)
            zeroed = 1;
    }
    if (!cs || zeroed)
        return zeroed ? CL_ZEROED : CL_UNALLOC;
    *cluster_offset = cs << 9;
    return CL_OK;
}

/* get_cluster for vmdk_check.c (INS_VMDK_* are the CL_* values). */
int ins_vmdk_get_cluster(struct ins_image *img, struct vmdk_extent *e,
                         uint64_t offset, uint64_t *cluster_offset)
{
    return get_cluster((struct vmdk_image *)img, e, offset, cluster_offset, NULL);
}

/* Bytes of one grain (the whole extent, for flat ones). */
static uint64_t cluster_bytes(const struct vmdk_extent *e)
{
    return (uint64_t)e->cluster_sectors * SECTOR;
}

static int io_error(struct vmdk_image *s)
{
    return ins_error(s->base.ctx, INS_EIO, "Input/output error");
}

/*
 * qemu answers one grain per call, which makes a huge empty image cost a
 * call per grain.  We answer for the run of grains qemu would answer
 * alike (same extent, same unallocated or zeroed status), whole empty
 * grain directory entries at a time.  The runs merge exactly as qemu-img
 * merges its per-grain answers, so output does not change.
 */
static int extend_run(struct vmdk_image *s, struct vmdk_extent *e,
                      uint64_t offset, uint64_t bytes, int status, int empty_l1,
                      uint64_t *pnum)
{
    uint64_t csize = cluster_bytes(e), start = extent_start(e);
    uint64_t ext_len = (uint64_t)e->sectors * SECTOR, run = *pnum;
    /* Grains that start inside the extent: qemu's last one may reach
     * past its end, into the next extent's range. */
    uint64_t last = ext_len / csize * csize + (ext_len % csize ? csize : 0);

    while (run < bytes) {
        uint64_t next = offset + run, rel = next - start, co, span = csize;
        int rc;

        if (next < offset || rel >= last || find_extent(s, next >> 9) != e)
            break;
        rc = get_cluster(s, e, next, &co, &empty_l1);
        if (rc < 0)
            return rc;
        if (rc != status)
            break;
        if (empty_l1) {
            /* The rest of this grain directory entry's coverage. */
            uint64_t cover = (uint64_t)e->l1_entry_sectors * SECTOR;

            span = cover - rel % cover;
            if (span > last - rel)
                span = last - rel;
        }
        run += span;
    }
    (void)empty_l1;
    *pnum = run;
    return status;
}

/* qemu's vmdk_co_block_status. */
static int vmdk_block_status(struct ins_image *img, uint64_t offset,
                             uint64_t bytes, struct ins_bstat *st)
{
    struct vmdk_image *s = (struct vmdk_image *)img;
    struct vmdk_extent *e = find_extent(s, offset >> 9);
    uint64_t co = 0, in_cluster, csize;
    int rc, ret = 0, empty_l1 = 0;

    if (!e || (csize = cluster_bytes(e)) == 0)
        return io_error(s);
    rc = get_cluster(s, e, offset, &co, &empty_l1);
    if (rc < 0)
        return rc;
    in_cluster = (offset - extent_start(e)) % csize;
    st->pnum = csize - in_cluster;
    if ((rc == CL_UNALLOC || rc == CL_ZEROED) &&
        (rc = extend_run(s, e, offset, bytes, rc, empty_l1, &st->pnum)) < 0)
        return rc;
    switch (rc) {
    case CL_ERROR:
        return io_error(s);
    case CL_UNALLOC:
        break;
    case CL_ZEROED:
        ret = INS_BS_ZERO;
        break;
    case CL_OK:
        ret = INS_BS_DATA;
        if (!e->compressed) {
            ret |= INS_BS_OFFSET_VALID;
            st->map = co + in_cluster;
            if (e->flat)
                ret |= INS_BS_RECURSE;
        } else {
            ret |= INS_BS_COMPRESSED;
        }
        st->file = e->file;
        break;
    }
    if (st->pnum > bytes)
        st->pnum = bytes;
    return ret;
}

static void *z_alloc(void *opaque, unsigned items, unsigned size)
{
    return ins_calloc(opaque, items, size);
}

static void z_free(void *opaque, void *p)
{
    ins_free(opaque, p);
}

/* zlib's uncompress() through the engine's allocator: 0 and the output
 * length when the stream ends inside both buffers. */
static int inflate_all(struct ins_ctx *ctx, const uint8_t *in, size_t in_len,
                       uint8_t *out, size_t out_len, size_t *got)
{
    z_stream z;
    int zr;

    memset(&z, 0, sizeof(z));
    z.zalloc = z_alloc;
    z.zfree = z_free;
    z.opaque = ctx;
    if (inflateInit(&z) != Z_OK)
        return -1;
    z.next_in = (Bytef *)(uintptr_t)in;
    z.avail_in = (uInt)in_len;
    z.next_out = out;
    z.avail_out = (uInt)out_len;
    zr = inflate(&z, Z_FINISH);
    *got = out_len - z.avail_out;
    inflateEnd(&z);
    return zr == Z_STREAM_END ? 0 : -1;
}

/* qemu's vmdk_read_extent for a compressed grain (streamOptimized). */
static int read_compressed(struct vmdk_image *s, struct vmdk_extent *e,
                           uint64_t co, uint64_t in_cluster, uint8_t *buf,
                           size_t len)
{
    struct ins_ctx *ctx = s->base.ctx;
    uint64_t cbytes = cluster_bytes(e);
    uint8_t *raw = NULL, *out = NULL;
    const uint8_t *data;
    size_t data_len, avail, got;
    int rc;

    if (cbytes > MAX_COMPRESSED_GRAIN)
        return ins_error(ctx, INS_ENOTSUP, "compressed grains of more than %u MiB "
                         "are not supported", MAX_COMPRESSED_GRAIN >> 20);
    /* Two grains: the marker and the deflated data may exceed one. */
    if (!request_ok(co, 2 * cbytes))
        return io_error(s);
    raw = ins_malloc(ctx, (size_t)(2 * cbytes));
    out = ins_malloc(ctx, (size_t)cbytes);
    if (!raw || !out) {
        rc = ins_error(ctx, INS_ENOMEM, "Out of memory");
        goto out;
    }
    if ((rc = ins_read_zfill(e->file, raw, (size_t)(2 * cbytes), co)) < 0)
        goto out;
    data = raw;
    data_len = (size_t)cbytes;
    if (e->has_marker) {
        data = raw + 12;                /* lba (8 bytes), size (4 bytes) */
        data_len = ins_le32(raw + 8);
    }
    avail = (size_t)(2 * cbytes) - (size_t)(data - raw);
    if (data_len == 0 || data_len > 2 * cbytes ||
        inflate_all(ctx, data, data_len < avail ? data_len : avail, out,
                    (size_t)cbytes, &got) < 0 ||
        in_cluster + len > got) {
        rc = ins_error(ctx, INS_EINVAL, "Invalid argument");
        goto out;
    }
    memcpy(buf, out + in_cluster, len);
    rc = INS_OK;
out:
    ins_free(ctx, raw);
    ins_free(ctx, out);
    return rc;
}

/* qemu's vmdk_co_preadv over ranges block_status called data. */
static int vmdk_read(struct ins_image *img, void *buf, size_t len,
                     uint64_t offset)
{
    struct vmdk_image *s = (struct vmdk_image *)img;
    uint8_t *p = buf;

    while (len > 0) {
        struct vmdk_extent *e = find_extent(s, offset >> 9);
        uint64_t co = 0, in_cluster, csize;
        size_t n;
        int rc;

        if (!e || (csize = cluster_bytes(e)) == 0)
            return io_error(s);
        rc = get_cluster(s, e, offset, &co, NULL);
        if (rc < 0)
            return rc;
        in_cluster = (offset - extent_start(e)) % csize;
        n = csize - in_cluster < len ? (size_t)(csize - in_cluster) : len;
        if (rc == CL_ERROR)
            return io_error(s);
        if (rc != CL_OK) {
            memset(p, 0, n);
        } else if (e->compressed) {
            if ((rc = read_compressed(s, e, co, in_cluster, p, n)) < 0)
                return rc;
        } else {
            if (!request_ok(co + in_cluster, n))
                return io_error(s);
            if ((rc = ins_read_zfill(e->file, p, n, co + in_cluster)) < 0)
                return rc;
        }
        p += n;
        offset += n;
        len -= n;
    }
    return INS_OK;
}

static int vmdk_backing(struct ins_image *img, const char **name,
                        const char **format)
{
    struct vmdk_image *s = (struct vmdk_image *)img;

    *name = s->backing && s->backing[0] ? s->backing : NULL;
    *format = *name ? "vmdk" : NULL;
    return INS_OK;
}

const struct ins_driver ins_drv_vmdk = {
    .name = "vmdk",
    .probe = vmdk_probe,
    .open = vmdk_open,
    .info = vmdk_info,
    .close = vmdk_close,
    .block_status = vmdk_block_status,
    .read = vmdk_read,
    .plain_map = 1,
    .backing = vmdk_backing,
    .supports_backing = 1,
    .check = ins_vmdk_check,
};

/*
 * inspect.c - the upload safety gate.
 *
 * An image service must decide whether an upload is what it claims to be
 * and whether handing it to qemu-img or a hypervisor could make them read
 * something else (a backing file, a data file, an extent on the host) or
 * misbehave.  OpenStack's format_inspector is the reference for which
 * images are unsafe; every check it makes is made here with the same
 * outcome, and instar adds checks of its own (each failure names its
 * check, see docs/inspect.md).
 *
 * Detection reuses the drivers' probes (every match counts: a polyglot is
 * unsafe), facts come from the drivers' open and info, and a few header
 * fields OpenStack judges by are read as OpenStack reads them, because
 * the driver refuses exactly those images.  References are recorded by a
 * stand-in for ctx->open_ref that refuses every request: inspection opens
 * nothing but the one file.
 */
#include "inspect.h"
#include "qcow2.h"
#include "vmdk.h"

#include <stdio.h>
#include <string.h>

#define MAX_FORMATS     20
#define MAX_FAILURES    40
#define MAX_REFS        8
#define MSG_LEN         300
/* Block-status calls a walk over the image may make (bounded work on a
 * hostile image; the walk stops early past this). */
#define MAX_WALK_STEPS  (1u << 21)

/* vmdk: where OpenStack expects the embedded descriptor, and its cap. */
#define VMDK_DESC_OFFSET    512u
#define VMDK_DESC_MAX       ((1u << 20) - 1)
#define VMDK_GD_AT_END      UINT64_MAX

struct failure {
    const char *check;
    char message[MSG_LEN];
};

struct ref {
    enum ins_ref_kind kind;
    char name[256];
};

struct inspect {
    struct ins_ctx *ctx;
    struct ins_bdev *file;
    const struct ins_inspect_opts *opts;
    const char *formats[MAX_FORMATS];
    size_t n_formats;
    const char *format;             /* the format the image is, or NULL */
    const struct ins_driver *drv;   /* its driver, when qemu knows it */
    int has_vsize;
    uint64_t vsize;
    int encrypted;
    int have_end;                   /* the file's size is exact */
    struct failure failures[MAX_FAILURES];
    size_t n_failures;
    struct ref refs[MAX_REFS];
    size_t n_refs;
    uint8_t head[INS_PROBE_LEN];    /* first bytes, zero padded */
};

/* ---- findings ---- */

static void fail(struct inspect *in, const char *check, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Records a failed check; one entry per check name (the first reason). */
static void fail(struct inspect *in, const char *check, const char *fmt, ...)
{
    struct failure *f;
    va_list ap;
    size_t i;

    for (i = 0; i < in->n_failures; i++)
        if (strcmp(in->failures[i].check, check) == 0)
            return;
    if (in->n_failures >= MAX_FAILURES)
        return;
    f = &in->failures[in->n_failures++];
    f->check = check;
    va_start(ap, fmt);
    vsnprintf(f->message, sizeof(f->message), fmt, ap);
    va_end(ap);
}

static void add_format(struct inspect *in, const char *name)
{
    size_t i;

    for (i = 0; i < in->n_formats; i++)
        if (strcmp(in->formats[i], name) == 0)
            return;
    if (in->n_formats < MAX_FORMATS)
        in->formats[in->n_formats++] = name;
}

/* A name from the image, made printable and short for a message. */
static void printable(char *dst, size_t len, const char *src)
{
    size_t i;

    for (i = 0; src[i] && i + 1 < len; i++)
        dst[i] = (unsigned char)src[i] < 0x20 || (unsigned char)src[i] >= 0x7f
                     ? '?' : src[i];
    dst[i] = '\0';
}

/* The stand-in for ctx->open_ref: remembers the reference, opens nothing. */
static int record_ref(struct ins_ctx *ctx, enum ins_ref_kind kind,
                      const char *base, const char *name,
                      struct ins_bdev **out)
{
    struct inspect *in = ctx->ref_opaque;

    (void)base;
    *out = NULL;
    if (in->n_refs < MAX_REFS) {
        in->refs[in->n_refs].kind = kind;
        printable(in->refs[in->n_refs].name, sizeof(in->refs[0].name), name);
        in->n_refs++;
    }
    return ins_error(ctx, INS_EREFUSED, "inspect opens no referenced files");
}

/* ---- the end of a stream ---- */

/* Makes the file's size exact (reads a stream to its end). */
static int need_end(struct inspect *in)
{
    int rc;

    if (in->have_end)
        return INS_OK;
    if (!in->opts->stream || !in->opts->need_end) {
        in->have_end = 1;
        return INS_OK;
    }
    rc = in->opts->need_end(in->opts->opaque);
    if (rc < 0)
        return ins_error(in->ctx, rc, "could not read to the end of the input");
    in->have_end = 1;
    return INS_OK;
}

/* ---- detection: qemu's probes, plus what OpenStack recognises ---- */

static int is_text(const uint8_t *p, size_t len)
{
    size_t i;

    for (i = 0; i < len; i++)
        if (p[i] >= 0x7f || (p[i] < 0x20 && p[i] != '\n' && p[i] != '\r' &&
                             p[i] != '\t' && p[i] != '\f' && p[i] != '\v'))
            return 0;
    return 1;
}

/* Case-insensitive search for needle in the first len bytes of hay. */
static const char *find_ci(const char *hay, size_t len, const char *needle)
{
    size_t n = strlen(needle), i, j;

    for (i = 0; i + n <= len; i++) {
        for (j = 0; j < n; j++) {
            char a = hay[i + j], b = needle[j];

            if (a >= 'A' && a <= 'Z')
                a = (char)(a - 'A' + 'a');
            if (a != b)
                break;
        }
        if (j == n)
            return hay + i;
    }
    return NULL;
}

/*
 * OpenStack's "gpt" format: a boot sector signature that is not a FAT
 * volume boot record.  (A partitioned disk is raw to qemu; OpenStack
 * names it gpt whether the table is GPT or MBR.)
 */
static int looks_partitioned(const struct inspect *in)
{
    const uint8_t *b = in->head;
    int fat = b[0x10] == 2 && b[0x15] == 0xF8;

    return in->file->size >= 512 && b[510] == 0x55 && b[511] == 0xAA && !fat;
}

/* Formats whose header alone decides the verdict (the head_only list of
 * uses_end below), by their magic. */
static int head_only_magic(const uint8_t *h)
{
    return memcmp(h, "QFI\xfb", 4) == 0 || memcmp(h, "QED", 4) == 0 ||
           ins_le32(h + 0x40) == 0xbeda107fu;
}

static int detect(struct inspect *in)
{
    struct ins_detect det;
    unsigned saved = in->ctx->flags;
    uint64_t real_size = in->file->size;
    int clamped = 0;
    size_t i, head_len;
    int rc;

    rc = ins_read_zfill(in->file, in->head, sizeof(in->head), 0);
    if (rc < 0)
        return ins_error(in->ctx, rc, "could not read the image");
    /*
     * A stream: an image that its header alone judges is detected from
     * the stream's head (probes that look at the end of the file, such as
     * a fixed VHD's footer, see the end of the head); anything else is
     * read to its end first, so detection sees the file as it is.
     */
    if (in->opts->stream && !in->have_end) {
        if (head_only_magic(in->head)) {
            if (in->file->size > INS_INSPECT_STREAM_HEAD) {
                in->file->size = INS_INSPECT_STREAM_HEAD;
                clamped = 1;
            }
        } else if ((rc = need_end(in)) < 0) {
            return rc;
        }
    }
    /* Inspection judges content: qemu-img's raw fallback and its blind
     * spots (iso, a VHD footer at the end) do not apply. */
    in->ctx->flags &= ~(unsigned)INS_F_UNSAFE_QUIRKS;
    rc = ins_detect(in->ctx, in->file, &det);
    in->ctx->flags = saved;
    if (clamped)
        in->file->size = real_size;
    if (rc < 0)
        return rc;
    head_len = in->file->size < sizeof(in->head) ? (size_t)in->file->size
                                                 : sizeof(in->head);

    for (i = 0; i < det.n_matches; i++)
        add_format(in, det.matches[i]->name);
    if (det.drv && det.drv != &ins_drv_raw) {
        in->drv = det.drv;
        in->format = det.drv->name;
    }
    /* LUKS of another version: qemu does not probe it, OpenStack does. */
    if (head_len >= 8 && memcmp(in->head, "LUKS\xba\xbe", 6) == 0) {
        add_format(in, "luks");
        if (!in->format)
            in->format = "luks";
    }
    /* A vmdk descriptor file qemu's probe misses but OpenStack's finds:
     * text naming a createType. */
    if (!in->format && head_len >= 4 &&
        is_text(in->head, strnlen((const char *)in->head, head_len)) &&
        find_ci((const char *)in->head, strnlen((const char *)in->head, head_len),
                "createtype=\"")) {
        add_format(in, "vmdk");
        in->format = "vmdk";
    }
    if (looks_partitioned(in))
        add_format(in, "gpt");
    if (!in->format && det.drv == &ins_drv_raw) {
        in->drv = &ins_drv_raw;
        in->format = "raw";
    }
    return INS_OK;
}

/* ---- checks on the raw bytes, as OpenStack makes them ---- */

/* qcow and qcow2 share the magic: OpenStack's qcow2 inspector takes both
 * (and refuses every version but 2 and 3). */
static void check_qcow_header(struct inspect *in)
{
    const uint8_t *h = in->head;
    uint32_t version = ins_be32(h + 4);
    uint64_t incompat = ins_be64(h + 72);

    if (ins_be64(h + 8) != 0)
        fail(in, "backing_file", "Image has a backing file");
    if (version != 2 && version != 3) {
        fail(in, "unknown_features", "Unsupported qcow2 version %u", version);
        return;
    }
    if (version == 2)
        return;     /* no feature bits in version 2 */
    if (incompat & QCOW2_INCOMPAT_DATA_FILE)
        fail(in, "data_file", "Image has data_file set");
    /* OpenStack knows bits 0-3 (dirty, corrupt, data file, compression
     * type); anything else, extended L2 included, is unknown to it. */
    if (incompat & ~(uint64_t)0xf)
        fail(in, "unknown_features", "Unknown QCOW2 features found "
             "(incompatible feature bits 0x%llx)",
             (unsigned long long)(incompat & ~(uint64_t)0xf));
    if (incompat & QCOW2_INCOMPAT_CORRUPT)
        fail(in, "corrupt", "Image is marked corrupt (qemu found its metadata "
             "inconsistent)");
}

static void check_luks_header(struct inspect *in)
{
    int16_t version = (int16_t)ins_be16(in->head + 6);

    if (version != 1)
        fail(in, "version", "LUKS version %d is not supported", version);
}

/*
 * OpenStack's MBR rules: boot flags 0x00 or 0x80; a protective entry
 * (0xEE) starts at CHS 0/2/0 and LBA 1 and is the only entry; at least
 * one entry is used.  instar adds: a protective MBR protects a GPT.
 */
static void check_mbr(struct inspect *in)
{
    int i, used = 0, used_mask = 0, gpt = 0;

    for (i = 0; i < 4; i++) {
        const uint8_t *e = in->head + 446 + 16 * i;

        if (e[0] != 0x00 && e[0] != 0x80) {
            fail(in, "mbr", "MBR PTE %d has invalid boot flag", i);
            return;
        }
        if (e[4] != 0) {
            used++;
            used_mask |= 1 << i;
        }
        if (e[4] == 0xEE) {
            gpt = 1;
            if (e[1] != 0 || e[2] != 2 || e[3] != 0) {
                fail(in, "mbr", "GPT MBR has invalid start CHS");
                return;
            }
            if (ins_le32(e + 8) != 1) {
                fail(in, "mbr", "GPT MBR has invalid start LBA");
                return;
            }
        }
    }
    if (gpt && used_mask != 1) {
        fail(in, "mbr", "GPT MBR defines invalid extra partitions");
        return;
    }
    if (!used) {
        fail(in, "mbr", "GPT MBR has no partitions defined");
        return;
    }
    if (gpt) {
        uint8_t sig[8];

        /* The GPT header is at LBA 1: byte 512, or 4096 on 4K disks. */
        if ((ins_read(in->file, sig, 8, 512) != INS_OK ||
             memcmp(sig, "EFI PART", 8) != 0) &&
            (ins_read(in->file, sig, 8, 4096) != INS_OK ||
             memcmp(sig, "EFI PART", 8) != 0))
            fail(in, "gpt", "Protective MBR without a GPT header at LBA 1");
    }
}

/* ---- vmdk: the descriptor, as OpenStack parses it ---- */

/* Is the createType (lower case, length n) in the comma-separated list? */
static int type_allowed(const char *list, const char *type, size_t n)
{
    const char *p = list;

    while (*p) {
        const char *e = strchr(p, ',');
        size_t len = e ? (size_t)(e - p) : strlen(p), i;

        if (len == n) {
            for (i = 0; i < n; i++) {
                char c = p[i];

                if (c >= 'A' && c <= 'Z')
                    c = (char)(c - 'A' + 'a');
                if (c != type[i])
                    break;
            }
            if (i == n)
                return 1;
        }
        if (!e)
            break;
        p = e + 1;
    }
    return 0;
}

static int is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\f' ||
           c == '\v';
}

/* One descriptor line (lower case, stripped): 0 when acceptable. */
static int desc_line(struct inspect *in, const char *l, size_t n,
                     int *extents)
{
    const char *eq = memchr(l, '=', n), *sp = memchr(l, ' ', n);
    size_t word = sp ? (size_t)(sp - l) : n;

    if (n == 0 || l[0] == '#')
        return 0;
    if (n >= 3 && memcmp(l, "ddb", 3) == 0)
        return 0;
    if (eq && (!sp || sp > eq))
        return 0;                           /* key=value */
    if ((word == 2 && memcmp(l, "rw", 2) == 0) ||
        (word == 6 && memcmp(l, "rdonly", 6) == 0) ||
        (word == 8 && memcmp(l, "noaccess", 8) == 0)) {
        (*extents)++;
        if (memchr(l, '/', n)) {
            fail(in, "extents", "Invalid extent filenames found");
            return 1;
        }
        return 0;
    }
    fail(in, "descriptor", "Invalid VMDK descriptor data");
    return 1;
}

static void check_vmdk_descriptor(struct inspect *in, char *text, size_t len)
{
    const char *type, *q;
    size_t i, start, tlen;
    int extents = 0;

    for (i = 0; i < len; i++) {
        if ((unsigned char)text[i] >= 0x80) {
            fail(in, "descriptor", "Invalid VMDK descriptor data (not ASCII)");
            return;
        }
        if (text[i] >= 'A' && text[i] <= 'Z')
            text[i] = (char)(text[i] - 'A' + 'a');
    }
    type = find_ci(text, len, "createtype=\"");
    q = type ? memchr(type + 12, '"', len - (size_t)(type + 12 - text)) : NULL;
    if (!q || q - (type + 12) >= 64) {
        fail(in, "create_type", "Unsupported subformat (no createType found)");
    } else {
        type += 12;
        tlen = (size_t)(q - type);
        if (!type_allowed(in->opts->vmdk_types, type, tlen)) {
            char name[80];

            printable(name, sizeof(name) < tlen + 1 ? sizeof(name) : tlen + 1,
                      type);
            fail(in, "create_type", "Unsupported subformat '%s' (allowed: %s)",
                 name, in->opts->vmdk_types);
        }
    }
    /* Line by line: everything must be understood. */
    for (start = 0; start < len;) {
        size_t end = start, a, b;

        while (end < len && text[end] != '\n')
            end++;
        a = start;
        b = end;
        while (a < b && is_space(text[a]))
            a++;
        while (b > a && is_space(text[b - 1]))
            b--;
        if (desc_line(in, text + a, b - a, &extents))
            return;
        start = end + 1;
    }
    if (!extents)
        fail(in, "extents", "No extents found");
}

/* The streamOptimized footer: a copy of the header between a footer
 * marker and an end-of-stream marker, in the last 1536 bytes. */
static void check_vmdk_footer(struct inspect *in, const uint8_t *hdr)
{
    uint8_t tail[1536];
    static const uint8_t zero[496];
    const uint8_t *marker = tail, *footer = tail + 512, *eos = tail + 1024;

    if (need_end(in) < 0 || in->file->size < 1536 + 512 ||
        ins_read(in->file, tail, sizeof(tail), in->file->size - 1536) != INS_OK) {
        fail(in, "footer", "No footer found");
        return;
    }
    if (memcmp(footer, hdr, 4) != 0)
        fail(in, "footer", "Header and footer signature do not match");
    else if (memcmp(footer + 4, hdr + 4, 4) != 0)
        fail(in, "footer", "Header and footer versions do not match");
    else if (memcmp(footer + 28, hdr + 28, 16) != 0)
        fail(in, "footer", "Footer specifies a different descriptor than header");
    else if (ins_le64(footer + 56) == VMDK_GD_AT_END)
        fail(in, "footer", "Footer indicates another footer");
    else if (ins_le32(marker + 8) != 0 || ins_le32(marker + 12) != 3 ||
             memcmp(marker + 16, zero, sizeof(zero)) != 0)
        fail(in, "footer", "Footer marker is invalid");
    else if (ins_le64(eos) != 0 || ins_le32(eos + 8) != 0 ||
             ins_le32(eos + 12) != 0 || memcmp(eos + 16, zero, sizeof(zero)) != 0)
        fail(in, "footer", "End-of-stream marker is invalid");
}

static void check_vmdk(struct inspect *in)
{
    uint64_t off = 0, len;
    char *text;
    int rc;

    if (memcmp(in->head, "KDMV", 4) == 0) {
        uint32_t version = ins_le32(in->head + 4);
        uint64_t sec = ins_le64(in->head + 28), num = ins_le64(in->head + 36);

        if (version < 1 || version > 3) {
            fail(in, "descriptor", "Unsupported format version %u", version);
            return;
        }
        if (sec > UINT64_MAX / 512 || sec * 512 != VMDK_DESC_OFFSET) {
            fail(in, "descriptor", "Wrong descriptor location");
            return;
        }
        off = VMDK_DESC_OFFSET;
        len = num > VMDK_DESC_MAX / 512 ? VMDK_DESC_MAX : num * 512;
        if (ins_le64(in->head + 56) == VMDK_GD_AT_END)
            check_vmdk_footer(in, in->head);
    } else if (memcmp(in->head, "COWD", 4) == 0) {
        /* VMDK3: no descriptor at all; OpenStack has no word for it. */
        fail(in, "descriptor", "No descriptor found (VMDK3 sparse file)");
        return;
    } else {
        /* A descriptor file: the whole (text) file. */
        if (need_end(in) < 0) {
            fail(in, "descriptor", "No descriptor found");
            return;
        }
        len = in->file->size < VMDK_DESC_MAX ? in->file->size : VMDK_DESC_MAX;
        if (in->file->size > VMDK_DESC_MAX)
            fail(in, "descriptor", "Descriptor file larger than %u bytes",
                 VMDK_DESC_MAX);
    }
    text = ins_malloc(in->ctx, (size_t)len + 1);
    if (!text) {
        fail(in, "descriptor", "No descriptor found (out of memory)");
        return;
    }
    rc = ins_read_zfill(in->file, text, (size_t)len, off);
    if (rc < 0 || len == 0) {
        fail(in, "descriptor", "No descriptor found");
    } else {
        text[len] = '\0';
        check_vmdk_descriptor(in, text, strlen(text));
    }
    ins_free(in->ctx, text);
}

/* ---- facts from the driver ---- */

static int uses_end(const char *format)
{
    /* Formats whose verdict is complete from the start of the file. */
    static const char *const head_only[] = { "qcow2", "qcow", "qed", "vdi" };
    size_t i;

    if (!format)
        return 0;
    for (i = 0; i < sizeof(head_only) / sizeof(head_only[0]); i++)
        if (strcmp(format, head_only[i]) == 0)
            return 0;
    return 1;
}

/* A file's length as qemu's file node sees it (whole sectors). */
static uint64_t file_length(const struct ins_bdev *bd)
{
    return bd->size > UINT64_MAX - 511 ? bd->size : (bd->size + 511) & ~(uint64_t)511;
}

/*
 * Walks the image's own mapping (not a backing chain): data mapped past
 * the end of the file is a BAT entry beyond EOF; guest data in compressed
 * clusters far beyond what the file could hold is a decompression bomb.
 */
static void walk_mapping(struct inspect *in, struct ins_image *img,
                         const char *bounds_check, int check_ratio)
{
    uint64_t offset = 0, size = img->virtual_size, compressed = 0;
    uint64_t flen = file_length(in->file);
    unsigned steps;

    if (!img->drv->block_status)
        return;
    for (steps = 0; offset < size && steps < MAX_WALK_STEPS; steps++) {
        struct ins_bstat st;
        int rc;

        memset(&st, 0, sizeof(st));
        rc = img->drv->block_status(img, offset, size - offset, &st);
        if (rc < 0 || st.pnum == 0)
            break;
        if (st.pnum > size - offset)
            st.pnum = size - offset;
        /* (A compressed run's length is the guest's, not the file's.) */
        if (bounds_check && (rc & INS_BS_OFFSET_VALID) &&
            !(rc & INS_BS_COMPRESSED) && st.file == in->file &&
            (st.map > flen || st.pnum > flen - st.map)) {
            fail(in, bounds_check, "%s for guest offset %llu points beyond "
                 "the end of the file (host offset %llu, file length %llu)",
                 strcmp(bounds_check, "bat") == 0 ? "Block table entry"
                                                   : "Grain table entry",
                 (unsigned long long)offset, (unsigned long long)st.map,
                 (unsigned long long)flen);
            bounds_check = NULL;
        }
        if (rc & INS_BS_COMPRESSED)
            compressed += st.pnum;
        offset += st.pnum;
    }
    if (check_ratio && in->opts->max_ratio && in->file->size &&
        compressed / in->opts->max_ratio > in->file->size)
        fail(in, "compression_ratio", "Compressed data expands %llu times "
             "(more than the limit of %llu): clusters are shared",
             (unsigned long long)(compressed / in->file->size),
             (unsigned long long)in->opts->max_ratio);
}

/* What a driver's info() allocated (info.c keeps its own copy of this). */
static void free_info(struct ins_ctx *ctx, struct ins_info *info)
{
    size_t i;

    for (i = 0; i < info->n_snapshots; i++) {
        ins_free(ctx, info->snapshots[i].id);
        ins_free(ctx, info->snapshots[i].name);
    }
    ins_free(ctx, info->snapshots);
    ins_free(ctx, info->backing_filename);
    ins_free(ctx, info->backing_format);
    for (i = 0; i < info->n_children; i++)
        ins_free(ctx, info->children[i].name);
    tree_free(ctx->alloc, info->format_specific);
}

static void note_refs(struct inspect *in)
{
    size_t i;

    for (i = 0; i < in->n_refs; i++) {
        const char *name = in->refs[i].name;

        switch (in->refs[i].kind) {
        case INS_REF_BACKING:
            fail(in, "backing_file", "Image has a backing file '%s'", name);
            break;
        case INS_REF_DATA_FILE:
            fail(in, "data_file", "Image has data_file set ('%s')", name);
            break;
        case INS_REF_EXTENT:
            fail(in, "extents", "Extent file '%s' is outside the image", name);
            break;
        case INS_REF_PARENT:
            fail(in, "parent", "Differencing disk with parent '%s'", name);
            break;
        }
    }
}

static void driver_facts(struct inspect *in)
{
    struct ins_ctx *ctx = in->ctx;
    const struct ins_driver *drv = in->drv;
    int (*saved_open)(struct ins_ctx *, enum ins_ref_kind, const char *,
                      const char *, struct ins_bdev **) = ctx->open_ref;
    void *saved_opaque = ctx->ref_opaque;
    struct tree_builder tb;
    struct ins_info *info = NULL;
    struct ins_image *img = NULL;
    unsigned flags = 0;
    int rc;

    /* A differencing VHDX opens only for reading (qemu refuses it). */
    if (drv == &ins_drv_vhdx || drv == &ins_drv_vpc)
        flags = INS_O_READ;
    ctx->open_ref = record_ref;
    ctx->ref_opaque = in;
    ctx->errmsg[0] = '\0';
    rc = drv->open(ctx, in->file, flags, &img);
    if (rc < 0) {
        char msg[MSG_LEN];

        printable(msg, sizeof(msg), ctx->errmsg);
        note_refs(in);
        /* qemu's vpc driver refuses a BAT reaching past the file itself. */
        if (drv == &ins_drv_vpc &&
            strstr(msg, "free_data_block_offset points after the end of file"))
            fail(in, "bat", "Block table entries point beyond the end of the "
                 "file (qemu-img: %s)", msg);
        else if (!in->n_refs)
            fail(in, "invalid", "qemu-img cannot open the image: %s", msg);
        goto out;
    }
    note_refs(in);
    in->has_vsize = 1;
    in->vsize = img->virtual_size;
    info = ins_calloc(ctx, 1, sizeof(*info));
    tree_builder_init(&tb, ctx->alloc);
    if (info && drv->info && drv->info(img, &tb, info) == INS_OK) {
        char name[256];

        in->vsize = info->virtual_size;
        in->encrypted = info->encrypted;
        if (info->backing_filename) {
            printable(name, sizeof(name), info->backing_filename);
            if (drv->backing_ref_kind == INS_REF_PARENT)
                fail(in, "parent", "Differencing disk with parent '%s'", name);
            else
                fail(in, "backing_file", "Image has a backing file '%s'", name);
        }
    }
    if (info) {
        free_info(ctx, info);
        ins_free(ctx, info);
    }
    /* Parents the driver decodes only on request (a VHD's locators). */
    if (drv->backing && drv->backing_ref_kind == INS_REF_PARENT) {
        const char *name = NULL, *fmt = NULL;

        if (drv->backing(img, &name, &fmt) == INS_OK && name) {
            char pname[256];

            printable(pname, sizeof(pname), name);
            fail(in, "parent", "Differencing disk with parent '%s'", pname);
        }
    }
    if (drv == &ins_drv_qcow2) {
        const struct qcow2_image *q = (const struct qcow2_image *)img;

        if (q->data_file) {
            char name[256];

            printable(name, sizeof(name), q->data_file);
            fail(in, "data_file", "Image has data_file set ('%s')", name);
        }
    }
    {
        /* Data mapped past the end of the file: a VHD/VHDX block table
         * entry, a vmdk grain table entry (its extent is this file). */
        const char *bounds = drv == &ins_drv_vpc || drv == &ins_drv_vhdx ? "bat"
                             : drv == &ins_drv_vmdk ? "extents" : NULL;
        /* Deflate's bound: qcow/qcow2 with zlib, vmdk streamOptimized.
         * A stream's qcow2 tables may lie past what it keeps: files only. */
        int ratio = drv == &ins_drv_vmdk || drv == &ins_drv_qcow ||
                    (drv == &ins_drv_qcow2 && !in->opts->stream &&
                     ((const struct qcow2_image *)img)->compression_type ==
                         QCOW2_COMPRESSION_ZLIB);

        if (bounds || ratio)
            walk_mapping(in, img, bounds, ratio);
    }
    drv->close(img);
out:
    ctx->open_ref = saved_open;
    ctx->ref_opaque = saved_opaque;
    ctx->errmsg[0] = '\0';
}

/* ---- expected format ---- */

/* OpenStack's names for qemu's formats. */
static const char *canonical(const char *name)
{
    if (strcmp(name, "vhd") == 0)
        return "vpc";
    if (strcmp(name, "gpt") == 0 || strcmp(name, "mbr") == 0)
        return "raw";
    return name;
}

static void check_expected(struct inspect *in)
{
    const char *want = in->opts->expected_format, *have;

    if (!want)
        return;
    /* A partitioned disk, and bytes no format claims, are raw. */
    have = in->format ? in->format : "raw";
    if (strcmp(canonical(want), canonical(have)) != 0)
        fail(in, "expected_format", "Content is %s, not the expected format %s",
             in->format ? in->format : "not a recognised image format", want);
}

/* ---- the verdict ---- */

static int build(struct inspect *in, struct tree_builder *tb,
                 struct tree **out)
{
    struct tree *d = tree_new_dict(tb), *list;
    size_t i;

    if (in->format)
        tree_put_str(tb, d, "format", in->format);
    list = tree_put_list(tb, d, "formats");
    for (i = 0; i < in->n_formats; i++)
        tree_append(tb, list, tree_new_str(tb, in->formats[i]));
    if (in->has_vsize)
        tree_put_uint(tb, d, "virtual-size", in->vsize);
    tree_put_bool(tb, d, "encrypted", in->encrypted);
    tree_put_bool(tb, d, "safe", in->n_failures == 0);
    list = tree_put_list(tb, d, "failures");
    for (i = 0; i < in->n_failures; i++) {
        struct tree *f = tree_append(tb, list, tree_new_dict(tb));

        tree_put_str(tb, f, "check", in->failures[i].check);
        tree_put_str(tb, f, "message", in->failures[i].message);
    }
    if (tb->failed || !d)
        return ins_error(in->ctx, INS_ENOMEM, "Out of memory");
    *out = d;
    return INS_OK;
}

void ins_inspect_add_failure(struct tree_builder *tb, struct tree *verdict,
                             const char *check, const char *message)
{
    struct tree *list = tree_get(verdict, "failures"), *safe, *f;

    if (!list || list->type != TREE_LIST)
        return;
    f = tree_append(tb, list, tree_new_dict(tb));
    tree_put_str(tb, f, "check", check);
    tree_put_str(tb, f, "message", message);
    safe = tree_get(verdict, "safe");
    if (safe && safe->type == TREE_BOOL)
        safe->v.b = 0;
}

int ins_op_inspect(struct ins_ctx *ctx, struct ins_bdev *file,
                   const struct ins_inspect_opts *opts,
                   struct tree_builder *tb, struct tree **out)
{
    struct inspect *in = ins_calloc(ctx, 1, sizeof(*in));
    int rc;

    if (!in)
        return ins_error(ctx, INS_ENOMEM, "Out of memory");
    in->ctx = ctx;
    in->file = file;
    in->opts = opts;
    in->have_end = !opts->stream;
    rc = detect(in);
    if (rc < 0)
        goto out;

    if (in->n_formats > 1) {
        char list[200] = "";
        size_t i;

        for (i = 0; i < in->n_formats; i++)
            snprintf(list + strlen(list), sizeof(list) - strlen(list), "%s%s",
                     i ? ", " : "", in->formats[i]);
        fail(in, "multiple_formats", "Multiple formats detected: %s", list);
    }
    if (!in->format && !in->n_formats)
        fail(in, "unknown_format", "Content matches no known disk image format "
             "and has no partition table");
    else if (!in->format)
        in->format = "raw";     /* a partition table qemu would not accept */
    check_expected(in);

    if (uses_end(in->format)) {
        rc = need_end(in);
        if (rc < 0)
            goto out;
    }
    /* The driver's findings first: they name what the image refers to. */
    if (in->drv)
        driver_facts(in);
    if (in->format && (strcmp(in->format, "qcow2") == 0 ||
                       strcmp(in->format, "qcow") == 0)) {
        check_qcow_header(in);
        /* The header's size, as OpenStack reports it, when qemu refused
         * the image. */
        if (!in->has_vsize) {
            in->has_vsize = 1;
            in->vsize = ins_be64(in->head + 24);
        }
    }
    else if (in->format && strcmp(in->format, "qed") == 0)
        fail(in, "banned", "This file format is not allowed");
    else if (in->format && strcmp(in->format, "luks") == 0)
        check_luks_header(in);
    else if (in->format && strcmp(in->format, "vmdk") == 0)
        check_vmdk(in);
    if (looks_partitioned(in))
        check_mbr(in);
    if (in->has_vsize && opts->max_virtual_size &&
        in->vsize > opts->max_virtual_size)
        fail(in, "virtual_size", "Virtual size %llu bytes is beyond the limit "
             "of %llu bytes", (unsigned long long)in->vsize,
             (unsigned long long)opts->max_virtual_size);
    rc = build(in, tb, out);
out:
    ins_free(ctx, in);
    return rc;
}

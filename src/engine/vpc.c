/*
 * vpc.c - Virtual PC / Hyper-V VHD images (qemu's "vpc" format).
 *
 * A VHD is a 512-byte footer ("conectix") plus either the raw disk in
 * front of it (fixed) or a dynamic header ("cxsparse") and a block
 * allocation table (BAT) of big-endian sector numbers.  Dynamic disks keep
 * a copy of the footer at offset 0, which is what qemu probes for; a fixed
 * disk has its footer only at the end, so qemu-img reports it as raw.
 * instar's safe default recognises that trailing footer too, unless
 * INS_F_UNSAFE_QUIRKS asks for qemu-img's answer.
 *
 * Opening follows qemu's vpc_open: the footer checksum must be right,
 * the virtual size comes from the CHS geometry or the footer's
 * current_size depending on the creator application (the rule changed in
 * qemu 10.0), and the BAT must fit in the file.
 *
 * Differencing disks (type 4) are where instar deliberately differs from
 * qemu: qemu's vpc driver ignores the parent, so sectors a differencing
 * disk does not hold read as zeros there.  The VHD specification says
 * they are the parent's, so the read layer opens the parent named by the
 * parent locators (as an INS_REF_PARENT reference, under the host's path
 * policy) and each allocated block's sector bitmap decides, sector by
 * sector, which layer holds the data.  info is unchanged: qemu shows no
 * backing file for a VHD, and neither do we.
 */
#include "engine.h"
#include "fmt_check.h"

#include <string.h>

#define FOOTER_SIZE      512
#define DYN_HEADER_SIZE  1024

#define VHD_FIXED        2
#define VHD_DIFF         4

/* qemu's limits: 2040 GiB, and the largest CHS geometry. */
#define VHD_MAX_SECTORS  0xff000000ULL
#define VHD_MAX_GEOMETRY (65535ULL * 16 * 255)

#define BAT_UNUSED       0xffffffffu
/* BATs up to this many bytes are kept in memory; larger ones are read
 * entry by entry (the BAT lies inside the file, so this is only about
 * our memory, not about trusting the image). */
#define BAT_CACHE_MAX    (64u << 20)
#define BAT_CHUNK        65536u

/* qemu's block layer refuses requests past BDRV_MAX_LENGTH (INT64_MAX
 * rounded down to 1 GiB) or longer than BDRV_REQUEST_MAX_BYTES with EIO;
 * reads past end of file return zeros. */
#define QEMU_MAX_LENGTH  0x7fffffffc0000000ULL
#define QEMU_MAX_REQUEST 0x7ffffe00ULL

/* Footer fields (big-endian). */
#define F_DATA_OFFSET    16
#define F_CREATOR_APP    28
#define F_CURRENT_SIZE   48
#define F_CYLS           56
#define F_HEADS          58
#define F_SECS           59
#define F_TYPE           60
#define F_CHECKSUM       64

/* Dynamic header fields. */
#define D_TABLE_OFFSET   16
#define D_MAX_ENTRIES    28
#define D_BLOCK_SIZE     32
#define D_PARENT_NAME    64     /* 512 bytes of UTF-16BE */
#define D_PARENT_NAME_LEN 512
#define D_LOCATORS       576    /* 8 entries of 24 bytes */
#define N_LOCATORS       8
#define LOCATOR_SIZE     24

/* Parent names: the most UTF-16 bytes we read from a locator (Windows'
 * longest path, 32767 units) and the longest UTF-8 name we hand on. */
#define LOCATOR_MAX_DATA 65536u
#define PARENT_NAME_MAX  4096u

struct vpc_image {
    struct ins_image base;
    uint8_t footer[FOOTER_SIZE];
    uint32_t type;              /* footer type: decides how reads work */
    int has_bat;                /* opened as dynamic (footer at offset 0) */
    uint32_t block_size;
    uint32_t bitmap_size;
    uint32_t max_table_entries;
    uint64_t bat_offset;
    uint32_t *bat;              /* host-order BAT, or NULL: read on demand */
    uint8_t dyn_header[DYN_HEADER_SIZE];
    char *parent;               /* decoded parent name, once backing() ran */
    /* A safe check (INS_O_CHECK without INS_F_UNSAFE_QUIRKS): what the
     * check reports (footer checksum, blocks past the end of the file)
     * does not fail the open. */
    int check_tolerant;
};

static int qemu_pread(struct ins_bdev *f, void *buf, uint64_t len,
                      uint64_t off)
{
    if (len > QEMU_MAX_REQUEST || off > QEMU_MAX_LENGTH ||
        off > QEMU_MAX_LENGTH - len)
        return INS_EIO;
    return ins_read_zfill(f, buf, (size_t)len, off);
}

/* One's complement of the byte sum, skipping the checksum field. */
static uint32_t footer_checksum(const uint8_t *footer)
{
    uint32_t sum = 0;
    int i;

    for (i = 0; i < FOOTER_SIZE; i++)
        if (i < F_CHECKSUM || i >= F_CHECKSUM + 4)
            sum += footer[i];
    return ~sum;
}

/* qemu's idea of the file's length: whole 512-byte sectors, the last one
 * padded with zeros. */
static uint64_t file_length(const struct ins_bdev *f)
{
    return f->size > UINT64_MAX - 511 ? f->size : (f->size + 511) & ~(uint64_t)511;
}

static int footer_valid_fixed(const uint8_t *footer)
{
    return memcmp(footer, "conectix", 8) == 0 &&
           ins_be32(footer + F_TYPE) == VHD_FIXED &&
           footer_checksum(footer) == ins_be32(footer + F_CHECKSUM);
}

static int vpc_probe(struct ins_ctx *ctx, struct ins_bdev *file,
                     const uint8_t *head, size_t head_len)
{
    uint8_t footer[FOOTER_SIZE];

    if (head_len >= 8 && memcmp(head, "conectix", 8) == 0)
        return 100;
    /* qemu-img probes only the start, so a fixed VHD is raw to it. */
    if (ctx->flags & INS_F_UNSAFE_QUIRKS)
        return 0;
    if (file_length(file) < FOOTER_SIZE ||
        ins_read_zfill(file, footer, sizeof(footer),
                       file_length(file) - FOOTER_SIZE) < 0)
        return 0;
    /* Weaker than any magic at offset 0: a file with a real header there
     * is that format, whatever its last sector says. */
    return footer_valid_fixed(footer) ? 50 : 0;
}

/* Whether we stand in for a qemu-img older than 10.0 (0: the newest). */
static int qemu_before_10(const struct ins_ctx *ctx)
{
    unsigned v = INS_QEMU_VERSION(ctx);

    return v != 0 && v < 1000;
}

/*
 * Virtual PC sizes a disk by its CHS geometry; Hyper-V and most other
 * tools by current_size.  qemu before 10.0 used the geometry unless it
 * knew the creator used current_size; 10.0 uses the geometry only for
 * the creators known to need it.
 */
static int size_from_chs(const struct ins_ctx *ctx, const uint8_t *app)
{
    if (!qemu_before_10(ctx))
        return memcmp(app, "vpc ", 4) == 0 || memcmp(app, "qemu", 4) == 0;
    return memcmp(app, "win ", 4) != 0 && memcmp(app, "qem2", 4) != 0 &&
           memcmp(app, "d2v ", 4) != 0 && memcmp(app, "CTXS", 4) != 0 &&
           memcmp(app, "tap\0", 4) != 0;
}

static uint64_t footer_sectors(const struct ins_ctx *ctx, const uint8_t *f)
{
    uint64_t chs = (uint64_t)ins_be16(f + F_CYLS) * f[F_HEADS] * f[F_SECS];

    if (!size_from_chs(ctx, f + F_CREATOR_APP) || chs == VHD_MAX_GEOMETRY)
        return ins_be64(f + F_CURRENT_SIZE) / 512;
    return chs;
}

static int fail_open(struct ins_ctx *ctx, struct ins_bdev *file, int err,
                     const char *why)
{
    return ins_error(ctx, err, "Could not open '%s': %s",
                     file->name ? file->name : "", why);
}

/*
 * Reads the BAT and checks, as qemu does, that no block lies past the end
 * of the file.  The table is kept when it is small enough.
 */
static int load_bat(struct ins_ctx *ctx, struct vpc_image *s)
{
    struct ins_bdev *file = s->base.file;
    uint64_t size = (uint64_t)s->max_table_entries * 4;
    uint64_t free_off, done;
    uint8_t *chunk;
    int rc = INS_OK;

    if (size > QEMU_MAX_REQUEST || s->bat_offset > QEMU_MAX_LENGTH ||
        s->bat_offset > QEMU_MAX_LENGTH - size)
        return ins_error(ctx, INS_EIO, "Error reading pagetable");

    /* The first free byte after the table, rounded to a sector. */
    free_off = (s->bat_offset + size + 511) & ~(uint64_t)511;
    if (free_off > file_length(file) && !s->check_tolerant)
        goto truncated;

    if (size <= BAT_CACHE_MAX) {
        s->bat = ins_malloc(ctx, size ? (size_t)size : 1);
        if (!s->bat)
            return ins_error(ctx, INS_ENOMEM, "Unable to allocate memory for page table");
    }
    chunk = ins_malloc(ctx, BAT_CHUNK);
    if (!chunk)
        return ins_error(ctx, INS_ENOMEM, "Unable to allocate memory for page table");
    for (done = 0; done < size; done += BAT_CHUNK) {
        size_t n = size - done < BAT_CHUNK ? (size_t)(size - done) : BAT_CHUNK;
        size_t i;

        if (ins_read_zfill(file, chunk, n, s->bat_offset + done) < 0) {
            rc = ins_error(ctx, INS_EIO, "Error reading pagetable");
            break;
        }
        for (i = 0; i + 4 <= n; i += 4) {
            uint32_t e = ins_be32(chunk + i);

            if (s->bat)
                s->bat[(done + i) / 4] = e;
            if (e != BAT_UNUSED) {
                uint64_t next = (uint64_t)e * 512 + s->bitmap_size + s->block_size;

                if (next > free_off)
                    free_off = next;
            }
        }
    }
    ins_free(ctx, chunk);
    if (rc < 0)
        return rc;
    if (free_off > file_length(file) && !s->check_tolerant)
        goto truncated;
    return INS_OK;
truncated:
    return ins_error(ctx, INS_EINVAL, "block-vpc: free_data_block_offset points "
                     "after the end of file. The image has been truncated.");
}

static int open_dynamic(struct ins_ctx *ctx, struct vpc_image *s,
                        uint64_t total_sectors)
{
    uint8_t hdr[DYN_HEADER_SIZE];
    int32_t entries;
    uint64_t computed;

    if (qemu_pread(s->base.file, hdr, sizeof(hdr),
                   ins_be64(s->footer + F_DATA_OFFSET)) < 0)
        return ins_error(ctx, INS_EIO, "Error reading dynamic VHD header");
    if (memcmp(hdr, "cxsparse", 8) != 0)
        return ins_error(ctx, INS_EINVAL, "Invalid header magic");
    memcpy(s->dyn_header, hdr, sizeof(hdr));

    s->block_size = ins_be32(hdr + D_BLOCK_SIZE);
    if (s->block_size < 512 || (s->block_size & (s->block_size - 1)))
        return ins_error(ctx, INS_EINVAL, "Invalid block size %u", s->block_size);
    s->bitmap_size = ((s->block_size / (8 * 512)) + 511) & ~511u;

    /* qemu keeps the entry count in an int: big values turn negative. */
    entries = (int32_t)ins_be32(hdr + D_MAX_ENTRIES);
    if (total_sectors * 512 / s->block_size > 0xffffffffULL)
        return ins_error(ctx, INS_EINVAL, "Too many blocks");
    computed = (uint64_t)(int64_t)entries * s->block_size;
    if (computed < total_sectors * 512)
        return ins_error(ctx, INS_EINVAL, "Page table too small");
    if (entries < 0 || entries > INT32_MAX / 4)
        return ins_error(ctx, INS_EINVAL, "Max Table Entries too large (%d)",
                         (int)entries);
    s->max_table_entries = (uint32_t)entries;
    s->bat_offset = ins_be64(hdr + D_TABLE_OFFSET);
    s->has_bat = 1;
    return load_bat(ctx, s);
}

static void vpc_close(struct ins_image *img)
{
    struct vpc_image *s = (struct vpc_image *)img;

    if (!s)
        return;
    ins_free(img->ctx, s->bat);
    ins_free(img->ctx, s->parent);
    ins_free(img->ctx, s);
}

static int vpc_open(struct ins_ctx *ctx, struct ins_bdev *file,
                    unsigned flags, struct ins_image **out)
{
    struct vpc_image *s = ins_calloc(ctx, 1, sizeof(*s));
    uint64_t total_sectors;
    int fixed = 0, rc;

    if (!s)
        return ins_error(ctx, INS_ENOMEM, "Out of memory");
    s->check_tolerant = (flags & INS_O_CHECK) &&
                        !(ctx->flags & INS_F_UNSAFE_QUIRKS);
    s->base.drv = &ins_drv_vpc;
    s->base.ctx = ctx;
    s->base.file = file;

    if (ins_read_zfill(file, s->footer, FOOTER_SIZE, 0) < 0) {
        rc = ins_error(ctx, INS_EIO, "Unable to read VHD header");
        goto fail;
    }
    if (memcmp(s->footer, "conectix", 8) != 0) {
        /* A fixed disk has its footer only at the end of the file. */
        if (file_length(file) < FOOTER_SIZE) {
            rc = ins_error(ctx, INS_EINVAL, "File too small for a VHD header");
            goto fail;
        }
        if (ins_read_zfill(file, s->footer, FOOTER_SIZE,
                           file_length(file) - FOOTER_SIZE) < 0) {
            rc = fail_open(ctx, file, INS_EIO, "Input/output error");
            goto fail;
        }
        if (memcmp(s->footer, "conectix", 8) != 0 ||
            ins_be32(s->footer + F_TYPE) != VHD_FIXED) {
            rc = ins_error(ctx, INS_EINVAL, "invalid VPC image");
            goto fail;
        }
        fixed = 1;
    }
    if (footer_checksum(s->footer) != ins_be32(s->footer + F_CHECKSUM) &&
        !s->check_tolerant) {
        rc = ins_error(ctx, INS_EINVAL, "Incorrect header checksum");
        goto fail;
    }
    s->type = ins_be32(s->footer + F_TYPE);

    total_sectors = footer_sectors(ctx, s->footer);
    if (total_sectors > VHD_MAX_SECTORS) {
        rc = fail_open(ctx, file, INS_EFBIG, "File too large");
        goto fail;
    }
    if (!fixed) {
        rc = open_dynamic(ctx, s, total_sectors);
        if (rc < 0)
            goto fail;
    }
    s->base.virtual_size = total_sectors * 512;
    *out = &s->base;
    return INS_OK;
fail:
    vpc_close(&s->base);
    return rc;
}

static int vpc_info(struct ins_image *img, struct tree_builder *tb,
                    struct ins_info *info)
{
    struct vpc_image *s = (struct vpc_image *)img;

    (void)tb;
    info->virtual_size = img->virtual_size;
    /* qemu reports the block size unless the footer says "fixed". */
    if (s->type != VHD_FIXED) {
        /* qemu's BlockDriverInfo keeps it in an int: 2 GiB is negative. */
        info->has_cluster_size = 1;
        info->cluster_size = (int32_t)s->block_size;
    }
    info->has_dirty_flag = 1;
    return INS_OK;
}

/* The BAT entry for block index i (BAT_UNUSED past the table). */
static int bat_entry(struct vpc_image *s, uint64_t i, uint32_t *e)
{
    uint8_t b[4];

    if (i >= s->max_table_entries) {
        *e = BAT_UNUSED;
        return INS_OK;
    }
    if (s->bat) {
        *e = s->bat[i];
        return INS_OK;
    }
    if (ins_read_zfill(s->base.file, b, 4, s->bat_offset + i * 4) < 0)
        return ins_error(s->base.ctx, INS_EIO, "Error reading pagetable");
    *e = ins_be32(b);
    return INS_OK;
}

/* Whether this image is a differencing disk we read with its parent. */
static int is_diff(const struct vpc_image *s)
{
    return s->has_bat && s->type == VHD_DIFF;
}

/*
 * In a differencing disk's allocated block, the sector bitmap at the
 * block's start says which sectors the child holds (bit set, most
 * significant bit first) and which are the parent's.  Finds how many
 * bytes from in_block (at most n) share the state of the first sector;
 * *present gets that state.
 */
static int bitmap_run(struct vpc_image *s, uint32_t e, uint64_t in_block,
                      uint64_t n, int *present, uint64_t *run)
{
    uint64_t first = in_block / 512, last = (in_block + n - 1) / 512;
    uint64_t sec = first, bitmap = (uint64_t)e * 512;
    uint8_t buf[512];

    while (sec <= last) {
        uint64_t byte = sec / 8, avail, i;

        /* One sector of bitmap covers 4096 sectors (2 MiB) at a time. */
        avail = s->bitmap_size - byte < sizeof(buf) ? s->bitmap_size - byte
                                                    : sizeof(buf);
        if (ins_read_zfill(s->base.file, buf, (size_t)avail, bitmap + byte) < 0)
            return ins_error(s->base.ctx, INS_EIO, "Error reading sector bitmap");
        for (i = sec % 8; i < avail * 8 && sec <= last; i++, sec++) {
            int bit = buf[i / 8] >> (7 - i % 8) & 1;

            if (sec == first)
                *present = bit;
            else if (bit != *present)
                goto done;
        }
    }
done:
    *run = sec * 512 - in_block;
    if (*run > n)
        *run = n;
    return INS_OK;
}

/*
 * qemu's vpc_co_block_status: a fixed disk is the file itself (data, and
 * the file may know it reads as zeros); in a dynamic disk an allocated
 * block is one run (its sectors are contiguous in the file and the sector
 * bitmap is not consulted), and consecutive unallocated blocks are one
 * run of zeros.  A differencing disk (our divergence, see the top of the
 * file) leaves unallocated blocks, and sectors of allocated blocks whose
 * bitmap bit is clear, to its parent.
 */
static int vpc_block_status(struct ins_image *img, uint64_t offset,
                            uint64_t bytes, struct ins_bstat *st)
{
    struct vpc_image *s = (struct vpc_image *)img;
    uint64_t done = 0;
    uint32_t e;
    int rc;

    if (!s->has_bat || s->type == VHD_FIXED) {
        st->pnum = bytes;
        st->map = offset;
        st->file = img->file;
        return INS_BS_DATA | INS_BS_OFFSET_VALID | INS_BS_RECURSE;
    }
    while (done < bytes) {
        uint64_t pos = offset + done;
        uint64_t in_block = pos % s->block_size;
        uint64_t n = s->block_size - in_block;

        if (n > bytes - done)
            n = bytes - done;
        rc = bat_entry(s, pos / s->block_size, &e);
        if (rc < 0)
            return rc;
        if (e != BAT_UNUSED) {
            int present = 1;

            if (done > 0)
                break;
            if (is_diff(s)) {
                rc = bitmap_run(s, e, in_block, n, &present, &n);
                if (rc < 0)
                    return rc;
            }
            st->pnum = n;
            if (!present)
                return 0;
            st->map = (uint64_t)e * 512 + s->bitmap_size + in_block;
            st->file = img->file;
            return INS_BS_DATA | INS_BS_OFFSET_VALID;
        }
        done += n;
    }
    st->pnum = done;
    return is_diff(s) ? 0 : INS_BS_ZERO;
}

/*
 * UTF-16 (big- or little-endian) to UTF-8 in out (outlen bytes with the
 * terminating NUL).  Trailing NULs are padding; a NUL before them, an
 * unpaired surrogate or a name too long is an error.
 */
static int utf16_to_utf8(const uint8_t *in, size_t inlen, int big_endian,
                         char *out, size_t outlen)
{
    size_t units = inlen / 2, i, o = 0;

    while (units > 0 && in[2 * units - 2] == 0 && in[2 * units - 1] == 0)
        units--;
    for (i = 0; i < units; i++) {
        const uint8_t *p = in + 2 * i;
        uint32_t c = big_endian ? ins_be16(p) : ins_le16(p);
        uint8_t enc[4];
        size_t len;

        if (c == 0)
            return -1;
        if (c >= 0xdc00 && c <= 0xdfff)
            return -1;
        if (c >= 0xd800 && c <= 0xdbff) {
            uint32_t lo;

            if (++i >= units)
                return -1;
            lo = big_endian ? ins_be16(p + 2) : ins_le16(p + 2);
            if (lo < 0xdc00 || lo > 0xdfff)
                return -1;
            c = 0x10000 + ((c - 0xd800) << 10) + (lo - 0xdc00);
        }
        if (c < 0x80) {
            enc[0] = (uint8_t)c;
            len = 1;
        } else if (c < 0x800) {
            enc[0] = (uint8_t)(0xc0 | c >> 6);
            enc[1] = (uint8_t)(0x80 | (c & 0x3f));
            len = 2;
        } else if (c < 0x10000) {
            enc[0] = (uint8_t)(0xe0 | c >> 12);
            enc[1] = (uint8_t)(0x80 | (c >> 6 & 0x3f));
            enc[2] = (uint8_t)(0x80 | (c & 0x3f));
            len = 3;
        } else {
            enc[0] = (uint8_t)(0xf0 | c >> 18);
            enc[1] = (uint8_t)(0x80 | (c >> 12 & 0x3f));
            enc[2] = (uint8_t)(0x80 | (c >> 6 & 0x3f));
            enc[3] = (uint8_t)(0x80 | (c & 0x3f));
            len = 4;
        }
        if (len >= outlen - o)
            return -1;
        memcpy(out + o, enc, len);
        o += len;
    }
    out[o] = '\0';
    return 0;
}

/* Windows' separators become '/', and a leading ".\" goes. */
static void windows_to_posix(char *name)
{
    char *p;

    for (p = name; *p; p++)
        if (*p == '\\')
            *p = '/';
    while (name[0] == '.' && name[1] == '/')
        memmove(name, name + 2, strlen(name + 2) + 1);
}

/* Decodes the locator entry with this platform code, if there is one:
 * returns 1 with out filled, 0 when absent, or an INS_E*. */
static int read_locator(struct vpc_image *s, const char *code, char *out,
                        size_t outlen)
{
    struct ins_ctx *ctx = s->base.ctx;
    int i;

    for (i = 0; i < N_LOCATORS; i++) {
        const uint8_t *l = s->dyn_header + D_LOCATORS + i * LOCATOR_SIZE;
        uint32_t len = ins_be32(l + 8);
        uint64_t off = ins_be64(l + 16), end;
        uint8_t *data;
        int rc;

        if (memcmp(l, code, 4) != 0 || len == 0)
            continue;
        if (len > LOCATOR_MAX_DATA || ins_add_overflow(off, len, &end) ||
            end > s->base.file->size)
            return ins_error(ctx, INS_EINVAL, "Invalid parent locator '%s'", code);
        data = ins_malloc(ctx, len);
        if (!data)
            return ins_error(ctx, INS_ENOMEM, "Out of memory");
        rc = ins_read(s->base.file, data, len, off);
        if (rc == 0 && utf16_to_utf8(data, len, 0, out, outlen) < 0)
            rc = ins_error(ctx, INS_EINVAL, "Invalid parent locator '%s'", code);
        else if (rc < 0)
            rc = ins_error(ctx, INS_EIO, "Error reading parent locator '%s'", code);
        ins_free(ctx, data);
        if (rc < 0)
            return rc;
        if (out[0])
            return 1;
    }
    return 0;
}

/*
 * The parent of a differencing disk: the relative Windows locator (W2ru),
 * else the absolute one (W2ku), else the parent's unicode name in the
 * header.  The host resolves it against our directory, under its policy.
 */
static int vpc_backing(struct ins_image *img, const char **name,
                       const char **format)
{
    struct vpc_image *s = (struct vpc_image *)img;
    struct ins_ctx *ctx = img->ctx;
    char *buf;
    int rc;

    *name = NULL;
    *format = NULL;
    if (!is_diff(s))
        return INS_OK;
    if (!s->parent) {
        buf = ins_malloc(ctx, PARENT_NAME_MAX);
        if (!buf)
            return ins_error(ctx, INS_ENOMEM, "Out of memory");
        rc = read_locator(s, "W2ru", buf, PARENT_NAME_MAX);
        if (rc == 0)
            rc = read_locator(s, "W2ku", buf, PARENT_NAME_MAX);
        if (rc == 0) {
            if (utf16_to_utf8(s->dyn_header + D_PARENT_NAME, D_PARENT_NAME_LEN,
                              1, buf, PARENT_NAME_MAX) < 0)
                rc = ins_error(ctx, INS_EINVAL, "Invalid parent unicode name");
        }
        if (rc < 0) {
            ins_free(ctx, buf);
            return rc;
        }
        windows_to_posix(buf);
        s->parent = buf;
    }
    if (!s->parent[0])
        return INS_OK;
    *name = s->parent;
    /* The parent of a VHD is a VHD: never let it be probed as anything
     * else (a qcow2 there could pull in a chain of its own). */
    *format = "vpc";
    return INS_OK;
}

const struct ins_driver ins_drv_vpc = {
    .name = "vpc",
    .probe = vpc_probe,
    .open = vpc_open,
    .info = vpc_info,
    .close = vpc_close,
    .block_status = vpc_block_status,
    .read = ins_read_mapped,
    .plain_map = 1,
    .backing = vpc_backing,
    /* Only differencing disks leave anything to a parent (block_status
     * says ZERO for a dynamic disk's unallocated blocks). */
    .supports_backing = 1,
    .backing_ref_kind = INS_REF_PARENT,
    .check = ins_vpc_check,
};

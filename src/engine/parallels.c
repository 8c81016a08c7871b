/*
 * parallels.c - the Parallels (ploop) image format.
 *
 * A 64-byte little-endian header, a block allocation table (BAT) of
 * 32-bit cluster offsets, then data clusters.  Two magics exist: the old
 * "WithoutFreeSpace" (32-bit sector count, BAT in sectors) and
 * "WithouFreSpacExt" (64-bit count, BAT in clusters).  qemu-img info
 * opens read-only, so qemu repairs nothing; the only structure it
 * validates beyond the header is the optional Format Extension cluster
 * (MD5-checked, holding dirty bitmaps), which we validate the same way
 * without allocating in proportion to it.
 */
#include "engine.h"
#include "fmt_check.h"

#include <stdio.h>
#include <string.h>

#define PRL_HEADER_SIZE     64
#define PRL_MAGIC_V1        "WithoutFreeSpace"
#define PRL_MAGIC_V2        "WithouFreSpacExt"
#define PRL_VERSION         2
#define PRL_SECTOR          512u
/* file-posix's optimal memory alignment: the host page size. */
#define PRL_MEM_ALIGN       4096u

/* The block layer's request limits (see qcow.c). */
#define BDRV_REQUEST_MAX_BYTES  (((uint64_t)INT32_MAX >> 9) << 9)
#define BDRV_MAX_LENGTH         ((uint64_t)INT64_MAX - ((1ull << 30) - 1))

#define EXT_MAGIC           0xAB234CEF23DCEA87ull
#define EXT_END_MAGIC       0x0ull
#define EXT_BITMAP_MAGIC    0x20385FAE252CB34Aull
#define EXT_HEADER_SIZE     24      /* magic + MD5 of the rest */
#define FEATURE_HEADER_SIZE 24      /* magic, flags, data_size, unused */
#define BITMAP_FEATURE_SIZE 32      /* size, id, granularity, l1_size */

/* Bitmap L1 entries read at a time. */
#define L1_CHUNK            1024

/* We refuse more dirty bitmaps than this in one extension (qemu has no
 * limit but its memory). */
#define PRL_MAX_BITMAPS     65536u

/* The BAT is loaded for reading only up to this size. */
#define PRL_MAX_BAT_BYTES   (256u << 20)

struct prl_image {
    struct ins_image base;
    uint32_t tracks;            /* sectors per cluster */
    uint32_t off_multiplier;    /* BAT unit in sectors */
    uint32_t bat_size;          /* entries */
    int64_t total_sectors;
    uint32_t *bat;              /* loaded on first read */
};

static int bdrv_request_ok(int64_t offset, uint64_t bytes)
{
    return offset >= 0 && bytes <= BDRV_REQUEST_MAX_BYTES &&
           (uint64_t)offset <= BDRV_MAX_LENGTH - bytes;
}

/* parallels_probe(): a whole header, either magic, version 2. */
static int prl_probe(struct ins_ctx *ctx, struct ins_bdev *file,
                     const uint8_t *head, size_t head_len)
{
    uint8_t h[PRL_HEADER_SIZE];

    (void)ctx; (void)file;
    /* qemu probes 2048 bytes padded with zeros past end of file (an
     * empty file is raw before any probe). */
    if (head_len == 0)
        return 0;
    memset(h, 0, sizeof(h));
    memcpy(h, head, head_len < sizeof(h) ? head_len : sizeof(h));
    if ((memcmp(h, PRL_MAGIC_V1, 16) == 0 || memcmp(h, PRL_MAGIC_V2, 16) == 0) &&
        ins_le32(h + 16) == PRL_VERSION)
        return 100;
    return 0;
}

/* ---- MD5 (RFC 1321), for the Format Extension checksum ---- */

struct md5 {
    uint32_t h[4];
    uint64_t len;
    uint8_t buf[64];
    size_t n;
};

static const uint32_t md5_k[64] = {
    0xd76aa478, 0xe8c7b756, 0x242070db, 0xc1bdceee, 0xf57c0faf, 0x4787c62a,
    0xa8304613, 0xfd469501, 0x698098d8, 0x8b44f7af, 0xffff5bb1, 0x895cd7be,
    0x6b901122, 0xfd987193, 0xa679438e, 0x49b40821, 0xf61e2562, 0xc040b340,
    0x265e5a51, 0xe9b6c7aa, 0xd62f105d, 0x02441453, 0xd8a1e681, 0xe7d3fbc8,
    0x21e1cde6, 0xc33707d6, 0xf4d50d87, 0x455a14ed, 0xa9e3e905, 0xfcefa3f8,
    0x676f02d9, 0x8d2a4c8a, 0xfffa3942, 0x8771f681, 0x6d9d6122, 0xfde5380c,
    0xa4beea44, 0x4bdecfa9, 0xf6bb4b60, 0xbebfbc70, 0x289b7ec6, 0xeaa127fa,
    0xd4ef3085, 0x04881d05, 0xd9d4d039, 0xe6db99e5, 0x1fa27cf8, 0xc4ac5665,
    0xf4292244, 0x432aff97, 0xab9423a7, 0xfc93a039, 0x655b59c3, 0x8f0ccc92,
    0xffeff47d, 0x85845dd1, 0x6fa87e4f, 0xfe2ce6e0, 0xa3014314, 0x4e0811a1,
    0xf7537e82, 0xbd3af235, 0x2ad7d2bb, 0xeb86d391,
};

static const uint8_t md5_r[64] = {
    7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22,
    5, 9, 14, 20, 5, 9, 14, 20, 5, 9, 14, 20, 5, 9, 14, 20,
    4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23,
    6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21,
};

static void md5_init(struct md5 *m)
{
    m->h[0] = 0x67452301;
    m->h[1] = 0xefcdab89;
    m->h[2] = 0x98badcfe;
    m->h[3] = 0x10325476;
    m->len = 0;
    m->n = 0;
}

static void md5_block(struct md5 *m, const uint8_t *p)
{
    uint32_t a = m->h[0], b = m->h[1], c = m->h[2], d = m->h[3];
    unsigned i;

    for (i = 0; i < 64; i++) {
        uint32_t f, t;
        unsigned g;

        if (i < 16) {
            f = (b & c) | (~b & d);
            g = i;
        } else if (i < 32) {
            f = (d & b) | (~d & c);
            g = (5 * i + 1) % 16;
        } else if (i < 48) {
            f = b ^ c ^ d;
            g = (3 * i + 5) % 16;
        } else {
            f = c ^ (b | ~d);
            g = (7 * i) % 16;
        }
        t = d;
        d = c;
        c = b;
        f += a + md5_k[i] + ins_le32(p + 4 * g);
        b += (f << md5_r[i]) | (f >> (32 - md5_r[i]));
        a = t;
    }
    m->h[0] += a;
    m->h[1] += b;
    m->h[2] += c;
    m->h[3] += d;
}

static void md5_update(struct md5 *m, const uint8_t *p, size_t len)
{
    m->len += len;
    while (len > 0) {
        size_t take = 64 - m->n < len ? 64 - m->n : len;

        memcpy(m->buf + m->n, p, take);
        m->n += take;
        p += take;
        len -= take;
        if (m->n == 64) {
            md5_block(m, m->buf);
            m->n = 0;
        }
    }
}

static void md5_final(struct md5 *m, uint8_t out[16])
{
    uint64_t bits = m->len * 8;
    uint8_t pad = 0x80, zero = 0, lenb[8];
    unsigned i;

    md5_update(m, &pad, 1);
    while (m->n != 56)
        md5_update(m, &zero, 1);
    for (i = 0; i < 8; i++)
        lenb[i] = (uint8_t)(bits >> (8 * i));
    md5_update(m, lenb, 8);
    for (i = 0; i < 4; i++) {
        out[4 * i] = (uint8_t)m->h[i];
        out[4 * i + 1] = (uint8_t)(m->h[i] >> 8);
        out[4 * i + 2] = (uint8_t)(m->h[i] >> 16);
        out[4 * i + 3] = (uint8_t)(m->h[i] >> 24);
    }
}

/* ---- the Format Extension ---- */

/* The bitmap names (UUIDs) seen so far: qemu refuses a duplicate. */
struct uuid_set {
    uint8_t (*slots)[17];       /* 16 bytes + used flag */
    size_t cap, count;
};

static int uuid_set_add(struct ins_ctx *ctx, struct uuid_set *s,
                        const uint8_t *id)
{
    size_t i, h = 0;

    if (s->count * 2 >= s->cap) {
        size_t ncap = s->cap ? s->cap * 2 : 64, j;
        uint8_t (*n)[17] = ins_calloc(ctx, ncap, sizeof(*n));

        if (!n)
            return INS_ENOMEM;
        for (j = 0; j < s->cap; j++) {
            if (!s->slots[j][16])
                continue;
            for (i = 0, h = 0; i < 16; i++)
                h = h * 31 + s->slots[j][i];
            while (n[h % ncap][16])
                h++;
            memcpy(n[h % ncap], s->slots[j], 17);
        }
        ins_free(ctx, s->slots);
        s->slots = n;
        s->cap = ncap;
    }
    for (i = 0, h = 0; i < 16; i++)
        h = h * 31 + id[i];
    for (;; h++) {
        uint8_t *slot = s->slots[h % s->cap];

        if (!slot[16]) {
            memcpy(slot, id, 16);
            slot[16] = 1;
            s->count++;
            return 0;
        }
        if (memcmp(slot, id, 16) == 0)
            return 1;
    }
}

static void format_uuid(const uint8_t *u, char out[37])
{
    snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-"
             "%02x%02x%02x%02x%02x%02x",
             u[0], u[1], u[2], u[3], u[4], u[5], u[6], u[7],
             u[8], u[9], u[10], u[11], u[12], u[13], u[14], u[15]);
}

static int count_trailing_zeros32(uint32_t v)
{
    int n = 0;

    if (!v)
        return 32;
    while (!(v & 1)) {
        v >>= 1;
        n++;
    }
    return n;
}

/*
 * parallels_load_bitmap(): the checks qemu makes on one dirty bitmap
 * feature at file offset `pos` (data_size bytes).  qemu keeps the bitmap;
 * info shows nothing of it, so we only validate.
 */
static int load_bitmap(struct prl_image *pi, struct uuid_set *seen,
                       uint64_t pos, uint32_t data_size, uint32_t cluster_size)
{
    struct ins_ctx *ctx = pi->base.ctx;
    struct ins_bdev *file = pi->base.file;
    uint8_t bf[BITMAP_FEATURE_SIZE], chunk[8 * L1_CHUNK];
    uint64_t size, bm_size, ser_size, tab_size, limit, offset, i;
    uint32_t granularity, l1_size;
    int g, rc;
    char name[37];

    if (data_size < BITMAP_FEATURE_SIZE)
        return ins_error(ctx, INS_EINVAL, "Too small Bitmap Feature area in "
                         "Parallels Format Extension: %u bytes, expected at "
                         "least %u bytes", data_size, BITMAP_FEATURE_SIZE);
    if (ins_read_zfill(file, bf, sizeof(bf), pos) < 0)
        return ins_error(ctx, INS_EIO, "Failed to read Format Extension cluster");
    size = ins_le64(bf);
    l1_size = ins_le32(bf + 28);
    if (size != (uint64_t)pi->total_sectors)
        return ins_error(ctx, INS_EINVAL, "Bitmap size (in sectors) %lld differs "
                         "from disk size in sectors %lld", (long long)size,
                         (long long)pi->total_sectors);
    if ((uint64_t)l1_size * 8 > data_size - BITMAP_FEATURE_SIZE)
        return ins_error(ctx, INS_EINVAL, "Bitmaps feature corrupted: l1 table "
                         "exceeds extension data_size");
    /* bdrv_create_dirty_bitmap() takes a 32-bit byte granularity; qemu
     * asserts (and aborts) on one that is not a power of two >= 512. */
    granularity = ins_le32(bf + 24) << 9;
    if (granularity < PRL_SECTOR || (granularity & (granularity - 1)))
        return ins_error(ctx, INS_EINVAL, "Invalid bitmap granularity %u, "
                         "expected a power of two of at least %u bytes",
                         granularity, PRL_SECTOR);
    format_uuid(bf + 8, name);
    rc = uuid_set_add(ctx, seen, bf + 8);
    if (rc < 0)
        return ins_error(ctx, INS_ENOMEM, "Out of memory");
    if (rc > 0)
        return ins_error(ctx, INS_EINVAL, "Bitmap already exists: %s", name);
    if (seen->count > PRL_MAX_BITMAPS)
        return ins_error(ctx, INS_EFBIG, "Too many dirty bitmaps in the "
                         "Parallels Format Extension");

    /* hbitmap serialisation: 64-bit words of one bit per granule. */
    g = count_trailing_zeros32(granularity);
    bm_size = (uint64_t)pi->total_sectors * PRL_SECTOR;
    ser_size = bm_size ? ((((bm_size - 1) >> g) >> 6) + 1) * 8 : 0;
    tab_size = (ser_size + cluster_size - 1) / cluster_size;
    if (tab_size != l1_size)
        return ins_error(ctx, INS_EINVAL, "Bitmap table size %u does not "
                         "correspond to bitmap size and cluster size. "
                         "Expected %llu", l1_size, (unsigned long long)tab_size);

    /* parallels_load_bitmap_data(): each L1 entry is 0 (zeros), 1 (ones)
     * or the sector of a data cluster. */
    limit = (uint64_t)granularity * (uint64_t)(int64_t)(int32_t)(cluster_size << 3);
    pos += BITMAP_FEATURE_SIZE;
    for (i = 0, offset = 0; i < l1_size; i++, offset += limit) {
        uint64_t entry;

        if (offset >= bm_size)
            return ins_error(ctx, INS_EINVAL, "Bitmap L1 table covers more than "
                             "the bitmap size %llu", (unsigned long long)bm_size);
        /* The table is read a chunk at a time: it may hold 2^28 entries. */
        if (i % L1_CHUNK == 0) {
            uint64_t left = l1_size - i;
            size_t n = left < L1_CHUNK ? (size_t)left : L1_CHUNK;

            if (ins_read_zfill(file, chunk, n * 8, pos + 8 * i) < 0)
                return ins_error(ctx, INS_EIO, "Failed to read Format Extension cluster");
        }
        entry = ins_le64(chunk + 8 * (i % L1_CHUNK));
        if (entry > 1 && !bdrv_request_ok((int64_t)(entry << 9), cluster_size))
            return ins_error(ctx, INS_EIO, "Failed to read bitmap data cluster: "
                             "Input/output error");
    }
    return INS_OK;
}

/* MD5 of [pos, pos + len), reading in chunks (past end of file: zeros). */
static int md5_range(struct ins_bdev *file, uint64_t pos, uint64_t len,
                     uint8_t out[16])
{
    uint8_t chunk[8192];
    struct md5 m;

    md5_init(&m);
    while (len > 0) {
        size_t n = len < sizeof(chunk) ? (size_t)len : sizeof(chunk);

        if (ins_read_zfill(file, chunk, n, pos) < 0)
            return INS_EIO;
        md5_update(&m, chunk, n);
        pos += n;
        len -= n;
    }
    md5_final(&m, out);
    return INS_OK;
}

/* parallels_read_format_extension() + parallels_parse_format_extension(). */
static int read_format_extension(struct prl_image *pi, int64_t ext_off,
                                 uint32_t cluster_size)
{
    struct ins_ctx *ctx = pi->base.ctx;
    struct ins_bdev *file = pi->base.file;
    uint8_t eh[EXT_HEADER_SIZE], md5[16];
    struct uuid_set seen = { NULL, 0, 0 };
    uint64_t magic, pos, start = (uint64_t)ext_off, end = start + cluster_size;
    int64_t remaining = (int64_t)cluster_size - EXT_HEADER_SIZE;
    int rc = INS_OK;

    /* qemu asserts ext_off > 0 (and aborts otherwise). */
    if (ext_off <= 0 || !bdrv_request_ok(ext_off, cluster_size))
        return ins_error(ctx, INS_EIO, "Failed to read Format Extension cluster: "
                         "Input/output error");
    if (ins_read_zfill(file, eh, sizeof(eh), (uint64_t)ext_off) < 0)
        return ins_error(ctx, INS_EIO, "Failed to read Format Extension cluster");
    magic = ins_le64(eh);
    if (magic != EXT_MAGIC)
        return ins_error(ctx, INS_EINVAL, "Wrong parallels Format Extension magic: "
                         "0x%llx, expected: 0x%llx", (unsigned long long)magic,
                         (unsigned long long)EXT_MAGIC);
    pos = (uint64_t)ext_off + EXT_HEADER_SIZE;
    if (md5_range(file, pos, remaining > 0 ? (uint64_t)remaining : 0, md5) < 0)
        return ins_error(ctx, INS_EIO, "Failed to read Format Extension cluster");
    if (memcmp(md5, eh + 8, 16) != 0)
        return ins_error(ctx, INS_EINVAL, "Wrong checksum in Format Extension "
                         "header. Format extension is corrupted.");
    /*
     * qemu 7.2-10.0 walk the features with `remaining` shrinking only by
     * each feature header, while the position also skips the (8-aligned)
     * data; past the cluster qemu reads beyond its buffer.  We follow the
     * same walk and stop at the cluster's end instead.
     */
    for (;;) {
        uint8_t fh[FEATURE_HEADER_SIZE];
        uint64_t fmagic;
        uint32_t data_size;

        if (remaining < FEATURE_HEADER_SIZE) {
            rc = ins_error(ctx, INS_EINVAL, "Can not read feature header, as "
                           "remaining bytes (%d) in Format Extension is less "
                           "than Feature header size (%u)", (int)remaining,
                           FEATURE_HEADER_SIZE);
            break;
        }
        if (pos + FEATURE_HEADER_SIZE > end) {
            rc = ins_error(ctx, INS_EINVAL,
                           "Feature data_size exceedes Format Extension cluster");
            break;
        }
        if (ins_read_zfill(file, fh, sizeof(fh), pos) < 0) {
            rc = ins_error(ctx, INS_EIO, "Failed to read Format Extension cluster");
            break;
        }
        pos += FEATURE_HEADER_SIZE;
        remaining -= FEATURE_HEADER_SIZE;
        fmagic = ins_le64(fh);
        data_size = ins_le32(fh + 16);
        if (ins_le64(fh + 8)) {
            rc = ins_error(ctx, INS_EINVAL,
                           "Flags for extension feature are unsupported");
            break;
        }
        if (data_size > (uint64_t)remaining) {
            rc = ins_error(ctx, INS_EINVAL,
                           "Feature data_size exceedes Format Extension cluster");
            break;
        }
        if (fmagic == EXT_END_MAGIC)
            break;
        if (fmagic != EXT_BITMAP_MAGIC) {
            rc = ins_error(ctx, INS_EINVAL, "Unknown feature: 0x%llx",
                           (unsigned long long)fmagic);
            break;
        }
        if (pos + data_size > end) {
            rc = ins_error(ctx, INS_EINVAL,
                           "Feature data_size exceedes Format Extension cluster");
            break;
        }
        rc = load_bitmap(pi, &seen, pos, data_size, cluster_size);
        if (rc < 0)
            break;
        pos = start + ((pos + data_size - start + 7) & ~(uint64_t)7);
    }
    ins_free(ctx, seen.slots);
    return rc;
}

/* ---- open and info ---- */

static void prl_close(struct ins_image *img)
{
    struct prl_image *pi = (struct prl_image *)img;

    if (!pi)
        return;
    ins_free(img->ctx, pi->bat);
    ins_free(img->ctx, pi);
}

static int io_error(struct ins_ctx *ctx, struct ins_bdev *file)
{
    return ins_error(ctx, INS_EIO, "Could not open '%s': Input/output error",
                     file->name ? file->name : "");
}

static const char *errno_text(int e, char *buf, size_t len)
{
    const char *d = strerrordesc_np(e);

    if (d)
        return d;
    snprintf(buf, len, "Unknown error %d", e);
    return buf;
}

/*
 * The block layer's checks on the sector count after open
 * (bdrv_refresh_total_sectors, in wrapping 64-bit arithmetic), then
 * qemu-img info's bdrv_getlength(), which takes a negative count for an
 * errno and cannot express more than INT64_MAX bytes.
 */
static int check_total(struct prl_image *pi)
{
    struct ins_ctx *ctx = pi->base.ctx;
    const char *name = pi->base.file->name ? pi->base.file->name : "";
    int64_t total = pi->total_sectors;
    char buf[32];

    if ((uint64_t)total * PRL_SECTOR > BDRV_MAX_LENGTH)
        return ins_error(ctx, INS_EFBIG, "Could not refresh total sector count: "
                         "File too large");
    if (total < 0) {
        int e = (int)(uint32_t)(0 - (uint64_t)total);

        if (e == 0)
            return ins_error_plain(ctx, INS_EFBIG, "Can't get image size '%s'", name);
        return ins_error_plain(ctx, INS_EFBIG, "Can't get image size '%s': %s", name,
                         errno_text(e, buf, sizeof(buf)));
    }
    if (total > INT64_MAX / (int64_t)PRL_SECTOR)
        return ins_error_plain(ctx, INS_EFBIG, "Can't get image size '%s': File too large",
                         name);
    return INS_OK;
}

static int prl_open(struct ins_ctx *ctx, struct ins_bdev *file,
                    unsigned flags, struct ins_image **out)
{
    uint8_t h[PRL_HEADER_SIZE];
    struct prl_image *pi;
    uint64_t header_size, ext_off;
    int rc;

    (void)flags;
    if (ins_read_zfill(file, h, sizeof(h), 0) < 0)
        return io_error(ctx, file);
    pi = ins_calloc(ctx, 1, sizeof(*pi));
    if (!pi)
        return ins_error(ctx, INS_ENOMEM, "Out of memory");
    pi->base.drv = &ins_drv_parallels;
    pi->base.ctx = ctx;
    pi->base.file = file;
    pi->total_sectors = (int64_t)ins_le64(h + 36);
    pi->tracks = ins_le32(h + 28);
    if (ins_le32(h + 16) != PRL_VERSION)
        goto not_parallels;
    if (memcmp(h, PRL_MAGIC_V1, 16) == 0) {
        pi->off_multiplier = 1;
        pi->total_sectors &= 0xffffffff;
    } else if (memcmp(h, PRL_MAGIC_V2, 16) == 0) {
        pi->off_multiplier = pi->tracks;
    } else {
        goto not_parallels;
    }
    if (pi->tracks == 0) {
        rc = ins_error(ctx, INS_EINVAL, "Invalid image: Zero sectors per track");
        goto fail;
    }
    if (pi->tracks > INT32_MAX / 513) {
        rc = ins_error(ctx, INS_EFBIG, "Invalid image: Too big cluster");
        goto fail;
    }
    pi->bat_size = ins_le32(h + 32);
    if (pi->bat_size > INT32_MAX / 4) {
        rc = ins_error(ctx, INS_EFBIG, "Catalog too large");
        goto fail;
    }
    /* qemu 10.0 refuses an extension offset that overflows in bytes; 7.2
     * went on to fail reading it (or to abort on a negative one). */
    ext_off = ins_le64(h + 56);
    if (ext_off >= (uint64_t)(INT64_MAX >> 9)) {
        rc = ins_error(ctx, INS_EFBIG, "Invalid image: Too big offset");
        goto fail;
    }
    /* qemu reads the header and BAT as one page-aligned block (7.2 read
     * the unrounded size when data_off was small). */
    header_size = ((uint64_t)PRL_HEADER_SIZE + 4ull * pi->bat_size +
                   PRL_MEM_ALIGN - 1) / PRL_MEM_ALIGN * PRL_MEM_ALIGN;
    if (header_size > BDRV_REQUEST_MAX_BYTES) {
        rc = io_error(ctx, file);
        goto fail;
    }
    if (ext_off) {
        rc = read_format_extension(pi, (int64_t)(ext_off << 9),
                                   pi->tracks * PRL_SECTOR);
        if (rc < 0)
            goto fail;
    }
    rc = check_total(pi);
    if (rc < 0)
        goto fail;
    pi->base.virtual_size = (uint64_t)pi->total_sectors * PRL_SECTOR;
    *out = &pi->base;
    return INS_OK;

not_parallels:
    rc = ins_error(ctx, INS_EINVAL, "Image not in Parallels format");
fail:
    prl_close(&pi->base);
    return rc;
}

static int prl_info(struct ins_image *img, struct tree_builder *tb,
                    struct ins_info *info)
{
    (void)tb;
    /* qemu's parallels driver has no get_info: no cluster size, no
     * dirty flag. */
    info->virtual_size = img->virtual_size;
    return INS_OK;
}

/* ---- reading ---- */

static int prl_load_bat(struct prl_image *pi)
{
    struct ins_ctx *ctx = pi->base.ctx;
    uint64_t bytes = (uint64_t)pi->bat_size * 4;
    uint8_t *raw;
    uint32_t i;

    if (pi->bat)
        return INS_OK;
    if (bytes > PRL_MAX_BAT_BYTES)
        return ins_error(ctx, INS_EFBIG, "Parallels BAT of %llu bytes is too large",
                         (unsigned long long)bytes);
    pi->bat = ins_malloc(ctx, bytes ? (size_t)bytes : 1);
    if (!pi->bat)
        return ins_error(ctx, INS_ENOMEM, "Out of memory");
    raw = (uint8_t *)pi->bat;
    if (ins_read_zfill(pi->base.file, raw, (size_t)bytes, PRL_HEADER_SIZE) < 0) {
        ins_free(ctx, pi->bat);
        pi->bat = NULL;
        return ins_error(ctx, INS_EIO, "Could not read the Parallels BAT");
    }
    for (i = 0; i < pi->bat_size; i++)
        pi->bat[i] = ins_le32(raw + 4 * (size_t)i);
    return INS_OK;
}

/* parallels_co_block_status() for one cluster: allocated clusters are
 * data at BAT * off_multiplier sectors; the rest is unallocated. */
static int prl_block_status(struct ins_image *img, uint64_t offset,
                            uint64_t bytes, struct ins_bstat *st)
{
    struct prl_image *pi = (struct prl_image *)img;
    uint64_t cs = (uint64_t)pi->tracks * PRL_SECTOR;
    uint64_t index = offset / cs, in_cluster = offset % cs;
    int rc = prl_load_bat(pi);

    if (rc < 0)
        return rc;
    st->pnum = cs - in_cluster;
    if (st->pnum > bytes)
        st->pnum = bytes;
    if (index >= pi->bat_size || pi->bat[index] == 0)
        return 0;
    st->map = (uint64_t)pi->bat[index] * pi->off_multiplier * PRL_SECTOR + in_cluster;
    st->file = img->file;
    return INS_BS_DATA | INS_BS_OFFSET_VALID;
}

void ins_prl_layout(const struct ins_image *img, struct prl_layout *l)
{
    const struct prl_image *pi = (const struct prl_image *)img;

    l->tracks = pi->tracks;
    l->off_multiplier = pi->off_multiplier;
    l->bat_size = pi->bat_size;
}

const struct ins_driver ins_drv_parallels = {
    .name = "parallels",
    .probe = prl_probe,
    .open = prl_open,
    .info = prl_info,
    .close = prl_close,
    .block_status = prl_block_status,
    .read = ins_read_mapped,
    .plain_map = 1,
    /* qemu's driver supports a backing file given by options (none is
     * stored), so unallocated clusters are the backing's, or zeros. */
    .supports_backing = 1,
    .check = ins_prl_check,
};

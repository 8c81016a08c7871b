/*
 * dmg.c - Apple disk images (UDIF).
 *
 * A 512-byte "koly" trailer at the end of the file points at the data
 * fork and at either a resource fork or an XML property list; both hold
 * "mish" blocks, tables of chunks (zeros, raw, zlib, bzip2, lzfse).
 * qemu probes by file name only (".dmg", score 2).  It bounds each chunk
 * (64 MiB, and 64 MiB worth of sectors unless the chunk is all zeros) and
 * the XML (16 MiB).  We validate exactly what qemu validates, reading
 * the chunk tables in pieces.
 *
 * Reading: qemu keeps every chunk in memory and so do we (32 bytes a
 * chunk), up to DMG_MAX_CHUNKS; an image with more still opens for info
 * but is refused for reading.  A sector is looked up as qemu does (the
 * chunk of the last sector, else qemu's binary search, which matters for
 * hostile unsorted tables).  zlib chunks are inflated whole into a buffer
 * of exactly their sector count (at most 64 MiB) and kept; raw chunks are
 * read from the file as needed.  bzip2 chunks are decoded the same way,
 * as qemu does with its dmg-bz2 module (which Debian does not build:
 * its qemu-img drops them at open and fails to read their sectors).
 * lzfse chunks are dropped at open, as without the dmg-lzfse module:
 * their sectors lie in no chunk and read as I/O errors, as there.  qemu has no block status for dmg: everything is
 * data, without an offset.
 *
 * Most of qemu's failures here set no message: qemu-img then prints the
 * errno against the file name ("Could not open 'x': Invalid argument").
 */
#include "engine.h"

#include <bzlib.h>
#include <string.h>
#include <zlib.h>

#define DMG_LENGTHS_MAX         (64u * 1024 * 1024)
#define DMG_SECTORCOUNTS_MAX    (DMG_LENGTHS_MAX / 512)
#define DMG_XML_MAX             (16u * 1024 * 1024)
#define DMG_MISH_MAGIC          0x6d697368u     /* "mish" */
#define DMG_MISH_MIN            244u
#define DMG_MISH_HEADER         204u
#define DMG_CHUNK_SIZE          40u

/* The block layer's request limits (see qcow.c). */
#define BDRV_REQUEST_MAX_BYTES  (((uint64_t)INT32_MAX >> 9) << 9)
#define BDRV_MAX_LENGTH         ((uint64_t)INT64_MAX - ((1ull << 30) - 1))

/* Chunk types. */
#define UDZE    0x00000000u     /* zeros */
#define UDRW    0x00000001u     /* raw */
#define UDIG    0x00000002u     /* ignore (zeros) */
#define UDZO    0x80000005u     /* zlib */
#define UDBZ    0x80000006u     /* bzip2 */
#define ULFO    0x80000007u     /* lzfse */

/* The chunk table kept for reading: 64 MiB, two million chunks (2 TiB
 * of typical 1 MiB chunks).  qemu's own table has no bound. */
#define DMG_MAX_CHUNKS          (2u << 20)
#define DMG_IN_CHUNK            65536u      /* compressed bytes per read */

/* One chunk as qemu keeps it: sector and offset already relocated. */
struct dmg_chunk {
    uint64_t sector;            /* first guest sector */
    uint64_t count;             /* sectors */
    uint64_t offset;            /* in the file */
    uint32_t length;            /* bytes in the file (<= 64 MiB) */
    uint32_t type;
};

struct dmg_image {
    struct ins_image base;
    struct dmg_chunk *chunks;   /* NULL when too_large */
    uint32_t n_chunks;
    int too_large;
    int before_10;              /* qemu 7.2's rules */
    uint32_t current;           /* qemu's current_chunk; n_chunks: none */
    uint8_t *out;               /* the inflated chunk out_chunk */
    size_t out_size;
    uint32_t out_chunk;         /* UINT32_MAX: none */
    uint8_t *in;                /* DMG_IN_CHUNK compressed bytes */
    z_stream zs;
    int zs_ready;
};

#define DMG_WINDOW              65536u

/* Parsing state shared by the mish blocks of one image. */
struct dmg_parse {
    struct ins_ctx *ctx;
    struct ins_bdev *file;
    uint64_t data_fork_offset;
    uint32_t n_chunks;          /* known chunks so far (qemu's index) */
    int before_10;              /* qemu 7.2's rules */
    /* The chunk table being built, or NULL once it grew too large. */
    struct dmg_chunk *chunks;
    uint32_t cap;
    int too_large;
    /* A read window: a resource fork may hold millions of tiny
     * resources, each a 4-byte read. */
    uint8_t *window;
    uint64_t window_start;
    size_t window_len;
};

/* dmg_probe(): the name, not the content. */
static int dmg_probe(struct ins_ctx *ctx, struct ins_bdev *file,
                     const uint8_t *head, size_t head_len)
{
    size_t len;

    (void)ctx; (void)head; (void)head_len;
    /* qemu takes an empty file for raw before probing at all. */
    if (!file->name || file->size == 0)
        return 0;
    len = strlen(file->name);
    return len > 4 && strcmp(file->name + len - 4, ".dmg") == 0 ? 2 : 0;
}

static int einval(struct dmg_parse *p)
{
    return ins_error(p->ctx, INS_EINVAL, "Could not open '%s': Invalid argument",
                     p->file->name ? p->file->name : "");
}

/*
 * dmg_is_known_block_type().  qemu treats bzip2 and lzfse chunks as known
 * only when its dmg-bz2 / dmg-lzfse modules are installed.  We decode
 * bzip2 as the module does; lzfse chunks are skipped unchecked, as
 * without the module.
 */
static int known_type(uint32_t type)
{
    return type == UDZE || type == UDRW || type == UDIG || type == UDZO ||
           type == UDBZ;
}

/* Keeps a checked chunk for reading, while the table is small enough. */
static int keep_chunk(struct dmg_parse *p, const struct dmg_chunk *c)
{
    if (p->too_large)
        return INS_OK;
    if (p->n_chunks >= DMG_MAX_CHUNKS) {
        ins_free(p->ctx, p->chunks);
        p->chunks = NULL;
        p->too_large = 1;
        return INS_OK;
    }
    if (p->n_chunks >= p->cap) {
        uint32_t cap = p->cap ? p->cap * 2 : 64;
        struct dmg_chunk *grown;

        if (cap > DMG_MAX_CHUNKS)
            cap = DMG_MAX_CHUNKS;
        grown = ins_realloc(p->ctx, p->chunks, (size_t)cap * sizeof(*grown));
        if (!grown)
            return ins_error(p->ctx, INS_ENOMEM, "Out of memory");
        p->chunks = grown;
        p->cap = cap;
    }
    p->chunks[p->n_chunks] = *c;
    return INS_OK;
}

/*
 * One 40-byte chunk entry: the limits qemu enforces on known types.
 * out_offset (sectors) and in_offset (bytes) relocate the entry, as the
 * mish block header says.
 */
static int check_chunk(struct dmg_parse *p, const uint8_t *e,
                       uint64_t out_offset, uint64_t in_offset)
{
    uint32_t type = ins_be32(e);
    uint64_t sectorcount, length;
    struct dmg_chunk c;
    int rc;

    if (!known_type(type))
        return INS_OK;
    sectorcount = ins_be64(e + 0x10);
    if (type != UDZE && type != UDIG && sectorcount > DMG_SECTORCOUNTS_MAX) {
        /* qemu reports this on its own line, then fails with EINVAL. */
        (void)ins_error(p->ctx, INS_EINVAL, "sector count %llu for chunk %u "
                        "is larger than max (%u)", (unsigned long long)sectorcount,
                        p->n_chunks, DMG_SECTORCOUNTS_MAX);
        return einval(p);
    }
    length = ins_be64(e + 0x20);
    if (length > DMG_LENGTHS_MAX) {
        (void)ins_error(p->ctx, INS_EINVAL, "length %llu for chunk %u is larger "
                        "than max (%u)", (unsigned long long)length, p->n_chunks,
                        DMG_LENGTHS_MAX);
        return einval(p);
    }
    /* qemu 10.0: a raw chunk's length must fill its sectors. */
    if (!p->before_10 && type == UDRW && sectorcount != (length + 511) / 512) {
        (void)ins_error(p->ctx, INS_EINVAL, "length %llu for chunk %u is "
                        "inconsistent with sector count %llu",
                        (unsigned long long)length, p->n_chunks,
                        (unsigned long long)sectorcount);
        return einval(p);
    }
    /* qemu adds in 64 bits and lets it wrap. */
    c.sector = ins_be64(e + 0x08) + out_offset;
    c.count = sectorcount;
    c.offset = ins_be64(e + 0x18) + in_offset;
    c.length = (uint32_t)length;
    c.type = type;
    rc = keep_chunk(p, &c);
    if (rc < 0)
        return rc;
    p->n_chunks++;
    return INS_OK;
}

/* dmg_read_mish_block() over a block in memory (from the XML). */
static int mish_from_buffer(struct dmg_parse *p, const uint8_t *buf, uint32_t count)
{
    uint32_t i, n;
    uint64_t out_offset, in_offset;

    /* Anything that is not a mish block is skipped. */
    if (count < DMG_MISH_MIN || ins_be32(buf) != DMG_MISH_MAGIC)
        return INS_OK;
    out_offset = ins_be64(buf + 0x08);
    in_offset = p->data_fork_offset + ins_be64(buf + 0x18);
    n = (count - DMG_MISH_HEADER) / DMG_CHUNK_SIZE;
    for (i = 0; i < n; i++) {
        int rc = check_chunk(p, buf + DMG_MISH_HEADER + (size_t)i * DMG_CHUNK_SIZE,
                             out_offset, in_offset);

        if (rc < 0)
            return rc;
    }
    return INS_OK;
}

/* dmg_read_mish_block() over a block in the file (from the resource
 * fork), read in pieces; past end of file the block layer gives zeros. */
static int mish_from_file(struct dmg_parse *p, uint64_t pos, uint32_t count)
{
    uint8_t head[0x20], chunk[DMG_CHUNK_SIZE * 64];
    uint32_t i = 0, n;
    uint64_t out_offset, in_offset;

    if (count < DMG_MISH_MIN)
        return INS_OK;
    if (ins_read_zfill(p->file, head, sizeof(head), pos) < 0)
        return einval(p);
    if (ins_be32(head) != DMG_MISH_MAGIC)
        return INS_OK;
    out_offset = ins_be64(head + 0x08);
    in_offset = p->data_fork_offset + ins_be64(head + 0x18);
    n = (count - DMG_MISH_HEADER) / DMG_CHUNK_SIZE;
    pos += DMG_MISH_HEADER;
    while (i < n) {
        uint32_t take = n - i < 64 ? n - i : 64, j;

        if (ins_read_zfill(p->file, chunk, (size_t)take * DMG_CHUNK_SIZE, pos) < 0)
            return einval(p);
        for (j = 0; j < take; j++) {
            int rc = check_chunk(p, chunk + (size_t)j * DMG_CHUNK_SIZE,
                                 out_offset, in_offset);

            if (rc < 0)
                return rc;
        }
        i += take;
        pos += (uint64_t)take * DMG_CHUNK_SIZE;
    }
    return INS_OK;
}

static int read_be32(struct dmg_parse *p, uint64_t pos, uint32_t *v)
{
    if (pos > BDRV_MAX_LENGTH - 4)
        return einval(p);
    if (!p->window) {
        p->window = ins_malloc(p->ctx, DMG_WINDOW);
        if (!p->window)
            return ins_error(p->ctx, INS_ENOMEM, "Out of memory");
        p->window_len = 0;
    }
    if (p->window_len == 0 || pos < p->window_start ||
        pos - p->window_start > p->window_len - 4) {
        /* Past end of file the block layer reads zeros. */
        if (ins_read_zfill(p->file, p->window, DMG_WINDOW, pos) < 0)
            return einval(p);
        p->window_start = pos;
        p->window_len = DMG_WINDOW;
    }
    *v = ins_be32(p->window + (pos - p->window_start));
    return INS_OK;
}

/* dmg_read_resource_fork(). */
static int read_resource_fork(struct dmg_parse *p, uint64_t begin, uint64_t length)
{
    uint32_t data_offset, count;
    uint64_t pos, end;
    int rc;

    rc = read_be32(p, begin, &data_offset);
    if (rc < 0)
        return rc;
    if (data_offset > length)
        return einval(p);
    rc = read_be32(p, begin + 8, &count);
    if (rc < 0)
        return rc;
    /* qemu adds the two in 32 bits. */
    if (count == 0 || (uint32_t)(data_offset + count) > length)
        return einval(p);
    pos = begin + data_offset;
    end = pos + count;
    while (pos < end) {
        rc = read_be32(p, pos, &count);
        if (rc < 0)
            return rc;
        if (count == 0 || count > end - pos)
            return einval(p);
        pos += 4;
        /* One read of the whole resource: the block layer's limit. */
        if (count > BDRV_REQUEST_MAX_BYTES)
            return ins_error(p->ctx, INS_EIO, "Could not open '%s': "
                             "Input/output error", p->file->name ? p->file->name : "");
        rc = mish_from_file(p, pos, count);
        if (rc < 0)
            return rc;
        pos += count;
    }
    return INS_OK;
}

/* glib's base64 alphabet rank ('=' ranks 0 and marks padding). */
static int b64_rank(uint8_t c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    if (c == '=')
        return 0;
    return -1;
}

/* g_base64_decode(), in place (the output is never longer than the
 * input); returns the decoded length. */
static size_t b64_decode(char *text)
{
    uint8_t *out = (uint8_t *)text;
    const uint8_t *in = (const uint8_t *)text;
    uint32_t v = 0;
    int i = 0;
    uint8_t last0 = 0, last1 = 0;
    size_t n = 0;

    for (; *in; in++) {
        int rank = b64_rank(*in);

        if (rank < 0)
            continue;
        last1 = last0;
        last0 = *in;
        v = v << 6 | (uint32_t)rank;
        if (++i == 4) {
            out[n++] = (uint8_t)(v >> 16);
            if (last1 != '=')
                out[n++] = (uint8_t)(v >> 8);
            if (last0 != '=')
                out[n++] = (uint8_t)v;
            i = 0;
        }
    }
    return n;
}

/* dmg_read_plist_xml(): every <data>...</data> is a base64 mish block. */
static int read_plist_xml(struct dmg_parse *p, uint64_t begin, uint64_t length)
{
    char *buf, *data_begin, *data_end;
    int rc = INS_OK;

    if (length == 0 || length > DMG_XML_MAX)
        return einval(p);
    if (begin > BDRV_MAX_LENGTH - length)
        return einval(p);
    buf = ins_malloc(p->ctx, (size_t)length + 1);
    if (!buf)
        return ins_error(p->ctx, INS_ENOMEM, "Out of memory");
    buf[length] = '\0';
    if (ins_read_zfill(p->file, buf, (size_t)length, begin) < 0) {
        ins_free(p->ctx, buf);
        return einval(p);
    }
    /* qemu searches with strstr(): the text ends at the first NUL. */
    data_end = buf;
    while ((data_begin = strstr(data_end, "<data>")) != NULL) {
        size_t n;

        data_begin += 6;
        data_end = strstr(data_begin, "</data>");
        if (!data_end) {
            rc = einval(p);
            break;
        }
        *data_end++ = '\0';
        n = b64_decode(data_begin);
        rc = mish_from_buffer(p, (const uint8_t *)data_begin, (uint32_t)n);
        if (rc < 0)
            break;
    }
    ins_free(p->ctx, buf);
    return rc;
}

/* dmg_find_koly_offset(): "koly" within the last 515 bytes of the
 * sector-rounded length. */
static int find_koly(struct dmg_parse *p, uint64_t *koly)
{
    uint64_t length = (p->file->size + 511) / 512 * 512, offset = 0;
    uint8_t buf[515];
    size_t n, i;

    if (length < 512)
        return ins_error(p->ctx, INS_EINVAL, "dmg file must be at least 512 bytes long");
    if (length > 511 + 512)
        offset = length - 511 - 512;
    n = length < sizeof(buf) ? (size_t)length : sizeof(buf);
    if (ins_read_zfill(p->file, buf, n, offset) < 0)
        return ins_error(p->ctx, INS_EIO, "Failed while reading UDIF trailer: "
                         "Input/output error");
    for (i = 0; i + 3 < n; i++) {
        if (memcmp(buf + i, "koly", 4) == 0) {
            *koly = offset + i;
            return INS_OK;
        }
    }
    return ins_error(p->ctx, INS_EINVAL, "Could not locate UDIF trailer in dmg file");
}

static int read_be64_at(struct dmg_parse *p, uint64_t pos, uint64_t *v)
{
    uint8_t b[8];

    if (ins_read_zfill(p->file, b, 8, pos) < 0)
        return einval(p);
    *v = ins_be64(b);
    return INS_OK;
}

/* Whether we stand in for a qemu-img older than 10.0 (0: the newest). */
static int qemu_before_10(const struct ins_ctx *ctx)
{
    unsigned v = INS_QEMU_VERSION(ctx);

    return v != 0 && v < 1000;
}

/* dmg_open() up to the chunk tables; *total is the sector count. */
static int dmg_parse_image(struct dmg_parse *p, uint64_t *total)
{
    uint64_t koly = 0, rsrc_off, rsrc_len, xml_off, xml_len;
    int rc;

    rc = find_koly(p, &koly);
    if (rc < 0)
        return rc;
    if ((rc = read_be64_at(p, koly + 0x18, &p->data_fork_offset)) < 0)
        return rc;
    if (p->data_fork_offset > koly)
        return einval(p);
    if ((rc = read_be64_at(p, koly + 0x28, &rsrc_off)) < 0 ||
        (rc = read_be64_at(p, koly + 0x30, &rsrc_len)) < 0)
        return rc;
    if (rsrc_off >= koly || rsrc_len > koly - rsrc_off)
        return einval(p);
    if ((rc = read_be64_at(p, koly + 0xd8, &xml_off)) < 0 ||
        (rc = read_be64_at(p, koly + 0xe0, &xml_len)) < 0)
        return rc;
    if (xml_off >= koly || xml_len > koly - xml_off)
        return einval(p);
    if ((rc = read_be64_at(p, koly + 0x1ec, total)) < 0)
        return rc;
    if ((int64_t)*total < 0)
        return einval(p);
    if (rsrc_len != 0) {
        rc = read_resource_fork(p, rsrc_off, rsrc_len);
        ins_free(p->ctx, p->window);
        p->window = NULL;
        return rc;
    }
    if (xml_len != 0)
        return read_plist_xml(p, xml_off, xml_len);
    return einval(p);
}

static int dmg_open(struct ins_ctx *ctx, struct ins_bdev *file,
                    unsigned flags, struct ins_image **out)
{
    struct dmg_parse p;
    uint64_t total = 0;
    struct dmg_image *di;
    int rc;

    (void)flags;
    memset(&p, 0, sizeof(p));
    p.ctx = ctx;
    p.file = file;
    p.before_10 = qemu_before_10(ctx);
    rc = dmg_parse_image(&p, &total);
    /* qemu 10.0 refuses an image without a single usable chunk (7.2
     * accepted it). */
    if (rc == INS_OK && p.n_chunks == 0)
        rc = einval(&p);

    /* The block layer's checks on the sector count (see parallels.c). */
    if (rc == INS_OK && total * 512 > BDRV_MAX_LENGTH)
        rc = ins_error(ctx, INS_EFBIG, "Could not refresh total sector count: "
                       "File too large");
    if (rc == INS_OK && total > INT64_MAX / 512)
        rc = ins_error_plain(ctx, INS_EFBIG, "Can't get image size '%s': File too large",
                             file->name ? file->name : "");
    if (rc < 0) {
        ins_free(ctx, p.chunks);
        return rc;
    }
    di = ins_calloc(ctx, 1, sizeof(*di));
    if (!di) {
        ins_free(ctx, p.chunks);
        return ins_error(ctx, INS_ENOMEM, "Out of memory");
    }
    di->base.drv = &ins_drv_dmg;
    di->base.ctx = ctx;
    di->base.file = file;
    di->base.virtual_size = total * 512;
    di->chunks = p.chunks;
    di->n_chunks = p.n_chunks;
    di->too_large = p.too_large;
    di->before_10 = p.before_10;
    di->current = p.n_chunks;
    di->out_chunk = UINT32_MAX;
    *out = &di->base;
    return INS_OK;
}

static int dmg_info(struct ins_image *img, struct tree_builder *tb,
                    struct ins_info *info)
{
    (void)tb;
    /* No get_info in qemu's dmg driver: no cluster size, no dirty flag. */
    info->virtual_size = img->virtual_size;
    return INS_OK;
}

static void dmg_close(struct ins_image *img)
{
    struct dmg_image *di = (struct dmg_image *)img;

    if (!di)
        return;
    if (di->zs_ready)
        inflateEnd(&di->zs);
    ins_free(img->ctx, di->chunks);
    ins_free(img->ctx, di->out);
    ins_free(img->ctx, di->in);
    ins_free(img->ctx, di);
}

/* ---- reading ---- */

static int bdrv_request_ok(uint64_t offset, uint64_t bytes)
{
    return bytes <= BDRV_REQUEST_MAX_BYTES && offset <= BDRV_MAX_LENGTH - bytes;
}

static void *z_alloc(void *opaque, unsigned items, unsigned size)
{
    return ins_calloc(opaque, items, size);
}

static void z_free(void *opaque, void *p)
{
    ins_free(opaque, p);
}

static int dmg_eio(struct dmg_image *di, uint32_t chunk, const char *why)
{
    return ins_error(di->base.ctx, INS_EIO, "dmg chunk %u: %s", chunk, why);
}

/* is_sector_in_chunk(), with qemu's wrapping sum. */
static int in_chunk(const struct dmg_image *di, uint32_t c, uint64_t sector)
{
    return c < di->n_chunks && di->chunks[c].sector <= sector &&
           di->chunks[c].sector + di->chunks[c].count > sector;
}

/*
 * search_chunk(): qemu's binary search, whatever the order of the table.
 * 7.2 starts with the upper bound one past the end; it can only reach
 * that phantom entry once every real one is ruled out, and then fails
 * whatever it reads there, so failing at once is the same.
 */
static uint32_t search_chunk(const struct dmg_image *di, uint64_t sector)
{
    uint32_t n = di->n_chunks, lo = 0, hi, mid;

    if (n == 0)
        return n;
    hi = di->before_10 ? n : n - 1;
    while (lo <= hi) {
        const struct dmg_chunk *c;

        mid = lo + (hi - lo) / 2;
        if (mid >= n)
            return n;
        c = &di->chunks[mid];
        if (c->sector > sector) {
            if (mid == 0)
                return n;
            hi = mid - 1;
        } else if (c->sector + c->count > sector) {
            return mid;
        } else {
            lo = mid + 1;
        }
    }
    return n;
}

/* Makes di->out hold at least size bytes (size <= 64 MiB: the sector
 * count was bounded at open) and di->in a read buffer. */
static int chunk_buffers(struct dmg_image *di, uint64_t size)
{
    struct ins_ctx *ctx = di->base.ctx;

    di->out_chunk = UINT32_MAX;     /* the buffer is about to change */
    if (size > di->out_size || !di->out) {
        ins_free(ctx, di->out);
        di->out_size = 0;
        di->out = ins_malloc(ctx, size ? (size_t)size : 1);
        if (!di->out)
            return ins_error(ctx, INS_ENOMEM, "Out of memory");
        di->out_size = (size_t)size;
    }
    if (!di->in) {
        di->in = ins_malloc(ctx, DMG_IN_CHUNK);
        if (!di->in)
            return ins_error(ctx, INS_ENOMEM, "Out of memory");
    }
    return INS_OK;
}

/* The next piece of a chunk's compressed bytes into di->in: *n bytes
 * from *pos, *left still to come after them. */
static int next_input(struct dmg_image *di, uint32_t ci, uint64_t *pos,
                      uint64_t *left, size_t *n)
{
    *n = *left < DMG_IN_CHUNK ? (size_t)*left : DMG_IN_CHUNK;
    if (ins_read_zfill(di->base.file, di->in, *n, *pos) < 0)
        return dmg_eio(di, ci, "read failed");
    *pos += *n;
    *left -= *n;
    return INS_OK;
}

/* Inflates zlib chunk c into di->out: exactly 512 * count bytes, or an
 * I/O error, as qemu's single inflate(Z_FINISH) call decides. */
static int inflate_chunk(struct dmg_image *di, uint32_t ci)
{
    struct ins_ctx *ctx = di->base.ctx;
    const struct dmg_chunk *c = &di->chunks[ci];
    uint64_t size = c->count * 512, pos = c->offset, left = c->length;
    int zr = Z_OK, rc;

    if (!bdrv_request_ok(c->offset, c->length))
        return dmg_eio(di, ci, "offset out of range");
    rc = chunk_buffers(di, size);
    if (rc < 0)
        return rc;
    if (!di->zs_ready) {
        memset(&di->zs, 0, sizeof(di->zs));
        di->zs.zalloc = z_alloc;
        di->zs.zfree = z_free;
        di->zs.opaque = ctx;
        if (inflateInit(&di->zs) != Z_OK)
            return ins_error(ctx, INS_ENOMEM, "Out of memory");
        di->zs_ready = 1;
    }
    if (inflateReset(&di->zs) != Z_OK)
        return dmg_eio(di, ci, "zlib reset failed");
    di->zs.next_out = di->out;
    di->zs.avail_out = (uInt)size;
    di->zs.avail_in = 0;
    /* In pieces, ending as qemu's one call would (see cloop.c). */
    for (;;) {
        if (di->zs.avail_in == 0 && left > 0) {
            size_t n;

            rc = next_input(di, ci, &pos, &left, &n);
            if (rc < 0)
                return rc;
            di->zs.next_in = di->in;
            di->zs.avail_in = (uInt)n;
        }
        zr = inflate(&di->zs, left == 0 ? Z_FINISH : Z_NO_FLUSH);
        if (zr != Z_OK)
            break;
    }
    if (zr != Z_STREAM_END || di->zs.total_out != size)
        return dmg_eio(di, ci, "corrupt compressed data");
    di->out_chunk = ci;
    return INS_OK;
}

static void *bz_alloc(void *opaque, int items, int size)
{
    if (items < 0 || size < 0)
        return NULL;
    return ins_calloc(opaque, (size_t)items, (size_t)size);
}

static void bz_free(void *opaque, void *p)
{
    ins_free(opaque, p);
}

/* Decodes bzip2 chunk c into di->out as qemu's dmg-bz2 module does: the
 * stream must end, having produced exactly 512 * count bytes.  The output
 * buffer bounds the expansion, so a bomb stops at 64 MiB. */
static int bunzip_chunk(struct dmg_image *di, uint32_t ci)
{
    struct ins_ctx *ctx = di->base.ctx;
    const struct dmg_chunk *c = &di->chunks[ci];
    uint64_t size = c->count * 512, pos = c->offset, left = c->length, out;
    bz_stream bs;
    int br = BZ_OK, rc;

    if (!bdrv_request_ok(c->offset, c->length))
        return dmg_eio(di, ci, "offset out of range");
    rc = chunk_buffers(di, size);
    if (rc < 0)
        return rc;
    memset(&bs, 0, sizeof(bs));
    bs.bzalloc = bz_alloc;
    bs.bzfree = bz_free;
    bs.opaque = ctx;
    if (BZ2_bzDecompressInit(&bs, 0, 0) != BZ_OK)
        return ins_error(ctx, INS_ENOMEM, "Out of memory");
    bs.next_out = (char *)di->out;
    bs.avail_out = (unsigned)size;
    for (;;) {
        if (bs.avail_in == 0) {
            size_t n;

            if (left == 0)
                break;              /* input gone, stream not ended */
            rc = next_input(di, ci, &pos, &left, &n);
            if (rc < 0) {
                BZ2_bzDecompressEnd(&bs);
                return rc;
            }
            bs.next_in = (char *)di->in;
            bs.avail_in = (unsigned)n;
        }
        br = BZ2_bzDecompress(&bs);
        if (br != BZ_OK)
            break;
        if (bs.avail_out == 0 && bs.avail_in != 0)
            break;                  /* more output than the chunk holds */
    }
    out = (uint64_t)bs.total_out_hi32 << 32 | bs.total_out_lo32;
    BZ2_bzDecompressEnd(&bs);
    if (br != BZ_STREAM_END || out != size)
        return dmg_eio(di, ci, "corrupt compressed data");
    di->out_chunk = ci;
    return INS_OK;
}

/* dmg_read_chunk(): makes the chunk holding `sector` current. */
static int dmg_find(struct dmg_image *di, uint64_t sector)
{
    uint32_t ci;
    int rc = INS_OK;

    if (in_chunk(di, di->current, sector))
        return INS_OK;
    ci = search_chunk(di, sector);
    if (ci >= di->n_chunks)
        return ins_error(di->base.ctx, INS_EIO, "dmg: no chunk holds sector %llu",
                         (unsigned long long)sector);
    di->current = di->n_chunks;
    switch (di->chunks[ci].type) {
    case UDZO:
        if (di->out_chunk != ci)
            rc = inflate_chunk(di, ci);
        break;
    case UDBZ:
        if (di->out_chunk != ci)
            rc = bunzip_chunk(di, ci);
        break;
    case UDRW:
        /* qemu reads the whole chunk in one request. */
        if (!bdrv_request_ok(di->chunks[ci].offset, di->chunks[ci].length))
            rc = dmg_eio(di, ci, "offset out of range");
        break;
    default:        /* zeros */
        break;
    }
    if (rc < 0)
        return rc;
    di->current = ci;
    return INS_OK;
}

/* Part of a raw chunk: the file's bytes up to the chunk's length, zeros
 * after (qemu 10.0 zeroes the rest of the last sector). */
static int read_raw(struct dmg_image *di, const struct dmg_chunk *c,
                    uint64_t at, uint8_t *p, size_t n)
{
    size_t avail = 0;

    if (di->before_10 && c->count > (c->length + 511ull) / 512 &&
        at + n > (c->length + 511ull) / 512 * 512)
        /* qemu 7.2 hands out whatever its buffer held there before. */
        return dmg_eio(di, di->current, "raw chunk shorter than its sector "
                       "count (qemu 7.2 reads stale memory here)");
    if (at < c->length)
        avail = c->length - at < n ? (size_t)(c->length - at) : n;
    if (avail && ins_read_zfill(di->base.file, p, avail, c->offset + at) < 0)
        return dmg_eio(di, di->current, "read failed");
    memset(p + avail, 0, n - avail);
    return INS_OK;
}

/* No block status in qemu's driver: everything is data. */
static int dmg_block_status(struct ins_image *img, uint64_t offset,
                            uint64_t bytes, struct ins_bstat *st)
{
    (void)img; (void)offset;
    st->pnum = bytes;
    return INS_BS_DATA;
}

/* dmg_co_preadv(): sector by sector in qemu; here a run at a time, since
 * every sector of a run finds the current chunk first. */
static int dmg_read(struct ins_image *img, void *buf, size_t len,
                    uint64_t offset)
{
    struct dmg_image *di = (struct dmg_image *)img;
    uint8_t *p = buf;

    if (di->too_large)
        return ins_error(img->ctx, INS_EFBIG, "dmg image has more than %u chunks: "
                         "too many to read", DMG_MAX_CHUNKS);
    while (len > 0) {
        uint64_t sector = offset / 512, rel, left, at;
        uint32_t in_sector = (uint32_t)(offset % 512);
        const struct dmg_chunk *c;
        size_t n = len;
        int rc = dmg_find(di, sector);

        if (rc < 0)
            return rc;
        c = &di->chunks[di->current];
        rel = sector - c->sector;
        left = c->count - rel;          /* sectors, >= 1 */
        if (left <= ((uint64_t)len + in_sector) / 512)
            n = (size_t)(left * 512 - in_sector);
        at = rel * 512 + in_sector;     /* byte within the chunk */
        switch (c->type) {
        case UDZO:
        case UDBZ:
            memcpy(p, di->out + at, n);
            break;
        case UDRW:
            rc = read_raw(di, c, at, p, n);
            if (rc < 0)
                return rc;
            break;
        default:
            memset(p, 0, n);
            break;
        }
        p += n;
        offset += n;
        len -= n;
    }
    return INS_OK;
}

const struct ins_driver ins_drv_dmg = {
    .name = "dmg",
    .probe = dmg_probe,
    .open = dmg_open,
    .info = dmg_info,
    .close = dmg_close,
    .block_status = dmg_block_status,
    .read = dmg_read,
};

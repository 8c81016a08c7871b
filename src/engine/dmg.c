/*
 * dmg.c - Apple disk images (UDIF).
 *
 * A 512-byte "koly" trailer at the end of the file points at the data
 * fork and at either a resource fork or an XML property list; both hold
 * "mish" blocks, tables of chunks (zeros, raw, zlib, bzip2, lzfse).
 * qemu probes by file name only (".dmg", score 2).  It bounds each chunk
 * (64 MiB, and 64 MiB worth of sectors unless the chunk is all zeros) and
 * the XML (16 MiB).  We validate exactly what qemu validates, streaming
 * the chunk tables instead of holding them, since info needs only the
 * size.  Reading (decompressing chunks) is not implemented.
 *
 * Most of qemu's failures here set no message: qemu-img then prints the
 * errno against the file name ("Could not open 'x': Invalid argument").
 */
#include "engine.h"

#include <string.h>

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

struct dmg_image {
    struct ins_image base;
};

#define DMG_WINDOW              65536u

/* Parsing state shared by the mish blocks of one image. */
struct dmg_parse {
    struct ins_ctx *ctx;
    struct ins_bdev *file;
    uint64_t data_fork_offset;
    uint32_t n_chunks;          /* known chunks so far (qemu's index) */
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
 * only when its dmg-bz2 / dmg-lzfse modules are installed; the qemu-img
 * builds we mirror have neither, so such chunks are skipped unchecked.
 */
static int known_type(uint32_t type)
{
    return type == UDZE || type == UDRW || type == UDIG || type == UDZO;
}

/* One 40-byte chunk entry: the limits qemu enforces on known types. */
static int check_chunk(struct dmg_parse *p, const uint8_t *e)
{
    uint32_t type = ins_be32(e);
    uint64_t sectorcount, length;

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
    p->n_chunks++;
    return INS_OK;
}

/* dmg_read_mish_block() over a block in memory (from the XML). */
static int mish_from_buffer(struct dmg_parse *p, const uint8_t *buf, uint32_t count)
{
    uint32_t i, n;

    /* Anything that is not a mish block is skipped. */
    if (count < DMG_MISH_MIN || ins_be32(buf) != DMG_MISH_MAGIC)
        return INS_OK;
    n = (count - DMG_MISH_HEADER) / DMG_CHUNK_SIZE;
    for (i = 0; i < n; i++) {
        int rc = check_chunk(p, buf + DMG_MISH_HEADER + (size_t)i * DMG_CHUNK_SIZE);

        if (rc < 0)
            return rc;
    }
    return INS_OK;
}

/* dmg_read_mish_block() over a block in the file (from the resource
 * fork), read in pieces; past end of file the block layer gives zeros. */
static int mish_from_file(struct dmg_parse *p, uint64_t pos, uint32_t count)
{
    uint8_t head[4], chunk[DMG_CHUNK_SIZE * 64];
    uint32_t i = 0, n;

    if (count < DMG_MISH_MIN)
        return INS_OK;
    if (ins_read_zfill(p->file, head, sizeof(head), pos) < 0)
        return einval(p);
    if (ins_be32(head) != DMG_MISH_MAGIC)
        return INS_OK;
    n = (count - DMG_MISH_HEADER) / DMG_CHUNK_SIZE;
    pos += DMG_MISH_HEADER;
    while (i < n) {
        uint32_t take = n - i < 64 ? n - i : 64, j;

        if (ins_read_zfill(p->file, chunk, (size_t)take * DMG_CHUNK_SIZE, pos) < 0)
            return einval(p);
        for (j = 0; j < take; j++) {
            int rc = check_chunk(p, chunk + (size_t)j * DMG_CHUNK_SIZE);

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

static int dmg_open(struct ins_ctx *ctx, struct ins_bdev *file,
                    unsigned flags, struct ins_image **out)
{
    struct dmg_parse p = { ctx, file, 0, 0, NULL, 0, 0 };
    uint64_t koly = 0, rsrc_off, rsrc_len, xml_off, xml_len, total;
    struct dmg_image *di;
    int rc;

    (void)flags;
    rc = find_koly(&p, &koly);
    if (rc < 0)
        return rc;
    if ((rc = read_be64_at(&p, koly + 0x18, &p.data_fork_offset)) < 0)
        return rc;
    if (p.data_fork_offset > koly)
        return einval(&p);
    if ((rc = read_be64_at(&p, koly + 0x28, &rsrc_off)) < 0 ||
        (rc = read_be64_at(&p, koly + 0x30, &rsrc_len)) < 0)
        return rc;
    if (rsrc_off >= koly || rsrc_len > koly - rsrc_off)
        return einval(&p);
    if ((rc = read_be64_at(&p, koly + 0xd8, &xml_off)) < 0 ||
        (rc = read_be64_at(&p, koly + 0xe0, &xml_len)) < 0)
        return rc;
    if (xml_off >= koly || xml_len > koly - xml_off)
        return einval(&p);
    if ((rc = read_be64_at(&p, koly + 0x1ec, &total)) < 0)
        return rc;
    if ((int64_t)total < 0)
        return einval(&p);
    if (rsrc_len != 0) {
        rc = read_resource_fork(&p, rsrc_off, rsrc_len);
        ins_free(ctx, p.window);
    } else if (xml_len != 0) {
        rc = read_plist_xml(&p, xml_off, xml_len);
    } else {
        rc = einval(&p);
    }
    if (rc < 0)
        return rc;
    /* qemu 10.0 refuses an image without a single usable chunk (7.2
     * accepted it). */
    if (p.n_chunks == 0)
        return einval(&p);

    /* The block layer's checks on the sector count (see parallels.c). */
    if (total * 512 > BDRV_MAX_LENGTH)
        return ins_error(ctx, INS_EFBIG, "Could not refresh total sector count: "
                         "File too large");
    if (total > INT64_MAX / 512)
        return ins_error_plain(ctx, INS_EFBIG, "Can't get image size '%s': File too large",
                         file->name ? file->name : "");
    di = ins_calloc(ctx, 1, sizeof(*di));
    if (!di)
        return ins_error(ctx, INS_ENOMEM, "Out of memory");
    di->base.drv = &ins_drv_dmg;
    di->base.ctx = ctx;
    di->base.file = file;
    di->base.virtual_size = total * 512;
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
    if (img)
        ins_free(img->ctx, img);
}

const struct ins_driver ins_drv_dmg = {
    .name = "dmg",
    .probe = dmg_probe,
    .open = dmg_open,
    .info = dmg_info,
    .close = dmg_close,
};

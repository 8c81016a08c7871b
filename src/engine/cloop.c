/*
 * cloop.c - compressed loopback images (Knoppix's cloop, V2.0).
 *
 * A shell-script preamble, then at byte 128 the big-endian block size and
 * block count, then n_blocks + 1 offsets of zlib-compressed blocks.  The
 * probe is weak (score 2: a shell script could start the same way).
 * qemu bounds the block size (64 MiB), the offsets table (512 MiB) and
 * each compressed block (128 MiB), and needs the offsets to increase; we
 * check the table in chunks instead of loading it.
 *
 * Reading inflates one block at a time and keeps it, as qemu does.  The
 * offsets are read through a small window, and the compressed bytes are
 * fed to zlib in pieces: memory is the block size plus ~100 KiB, however
 * large the table or a compressed block.  A block that does not inflate
 * to exactly block_size bytes is an I/O error, as in qemu.  qemu has no
 * block status for cloop: everything is data, without an offset.
 */
#include "engine.h"

#include <string.h>
#include <zlib.h>

#define CLOOP_MAGIC \
    "#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n"
#define CLOOP_MAX_BLOCK_SIZE    (64u * 1024 * 1024)
#define CLOOP_MAX_OFFSETS_SIZE  (512u * 1024 * 1024)
#define CLOOP_HEADER_OFFSET     128
#define CLOOP_OFFSETS_START     (CLOOP_HEADER_OFFSET + 8)
#define CLOOP_OFF_WINDOW        512         /* offsets held at once (4 KiB) */
#define CLOOP_IN_CHUNK          65536u      /* compressed bytes per read */

/* The block layer's request limits (see qcow.c). */
#define BDRV_REQUEST_MAX_BYTES  (((uint64_t)INT32_MAX >> 9) << 9)
#define BDRV_MAX_LENGTH         ((uint64_t)INT64_MAX - ((1ull << 30) - 1))

struct cloop_image {
    struct ins_image base;
    uint32_t block_size;
    uint32_t n_blocks;
    /* Reading: offsets [off_first, off_first + off_count) of the table. */
    uint64_t off[CLOOP_OFF_WINDOW];
    uint32_t off_first, off_count;
    uint8_t *block;             /* the inflated block `current` */
    uint32_t current;           /* n_blocks: none (qemu's current_block) */
    uint8_t *in;                /* CLOOP_IN_CHUNK compressed bytes */
    z_stream zs;
    int zs_ready;
};

/* cloop_probe(): the preamble, compared over what the buffer holds. */
static int cloop_probe(struct ins_ctx *ctx, struct ins_bdev *file,
                       const uint8_t *head, size_t head_len)
{
    size_t len = sizeof(CLOOP_MAGIC) - 1;

    (void)ctx; (void)file;
    /* qemu's buffer is 2048 bytes, zero-padded past end of file: a file
     * shorter than the preamble never matches it. */
    if (head_len < len)
        return 0;
    return memcmp(CLOOP_MAGIC, head, len) == 0 ? 2 : 0;
}

/* The offsets must increase, by at most twice the largest block size. */
static int cloop_check_offsets(struct ins_ctx *ctx, struct ins_bdev *file,
                               uint32_t count)
{
    uint8_t chunk[8192];
    uint64_t prev = 0, pos = CLOOP_HEADER_OFFSET + 8;
    uint32_t i = 0;

    while (i < count) {
        uint32_t n = count - i < sizeof(chunk) / 8 ? count - i
                                                   : (uint32_t)(sizeof(chunk) / 8);
        uint32_t j;

        /* Past end of file the block layer reads zeros. */
        if (ins_read_zfill(file, chunk, (size_t)n * 8, pos) < 0)
            return ins_error(ctx, INS_EIO, "Could not read cloop offsets");
        for (j = 0; j < n; j++, i++) {
            uint64_t off = ins_be64(chunk + 8 * (size_t)j);

            if (i > 0 && off < prev)
                return ins_error(ctx, INS_EINVAL, "offsets not monotonically "
                                 "increasing at index %u, image file is corrupt", i);
            if (i > 0 && off - prev > 2ull * CLOOP_MAX_BLOCK_SIZE)
                return ins_error(ctx, INS_EINVAL, "invalid compressed block size "
                                 "at index %u, image file is corrupt", i);
            prev = off;
        }
        pos += (uint64_t)n * 8;
    }
    return INS_OK;
}

static int cloop_open(struct ins_ctx *ctx, struct ins_bdev *file,
                      unsigned flags, struct ins_image **out)
{
    uint8_t h[8];
    struct cloop_image *ci;
    uint32_t block_size, n_blocks, offsets_size;
    int rc;

    (void)flags;
    if (ins_read_zfill(file, h, sizeof(h), CLOOP_HEADER_OFFSET) < 0)
        return ins_error(ctx, INS_EIO, "Could not read cloop header");
    block_size = ins_be32(h);
    if (block_size % 512)
        return ins_error(ctx, INS_EINVAL, "block_size %u must be a multiple of 512",
                         block_size);
    if (block_size == 0)
        return ins_error(ctx, INS_EINVAL, "block_size cannot be zero");
    if (block_size > CLOOP_MAX_BLOCK_SIZE)
        return ins_error(ctx, INS_EINVAL, "block_size %u must be %u MB or less",
                         block_size, CLOOP_MAX_BLOCK_SIZE / (1024 * 1024));
    n_blocks = ins_be32(h + 4);
    if (n_blocks > (UINT32_MAX - 1) / 8)
        return ins_error(ctx, INS_EINVAL, "n_blocks %u must be %u or less",
                         n_blocks, (UINT32_MAX - 1) / 8);
    offsets_size = (n_blocks + 1) * 8;
    if (offsets_size > CLOOP_MAX_OFFSETS_SIZE)
        return ins_error(ctx, INS_EINVAL, "image requires too many offsets, "
                         "try increasing block size");
    rc = cloop_check_offsets(ctx, file, n_blocks + 1);
    if (rc < 0)
        return rc;
    ci = ins_calloc(ctx, 1, sizeof(*ci));
    if (!ci)
        return ins_error(ctx, INS_ENOMEM, "Out of memory");
    ci->base.drv = &ins_drv_cloop;
    ci->base.ctx = ctx;
    ci->base.file = file;
    ci->block_size = block_size;
    ci->n_blocks = n_blocks;
    ci->current = n_blocks;
    /* qemu 10.0 multiplies in 64 bits; 7.2 did it in 32 and wrapped
     * (for images of 2 TiB and more). */
    ci->base.virtual_size = (uint64_t)n_blocks * (block_size / 512) * 512;
    *out = &ci->base;
    return INS_OK;
}

static int cloop_info(struct ins_image *img, struct tree_builder *tb,
                      struct ins_info *info)
{
    (void)tb;
    /* No get_info in qemu's cloop driver: no cluster size, no dirty flag. */
    info->virtual_size = img->virtual_size;
    return INS_OK;
}

static void cloop_close(struct ins_image *img)
{
    struct cloop_image *ci = (struct cloop_image *)img;

    if (!ci)
        return;
    if (ci->zs_ready)
        inflateEnd(&ci->zs);
    ins_free(img->ctx, ci->block);
    ins_free(img->ctx, ci->in);
    ins_free(img->ctx, ci);
}

/* ---- reading ---- */

static void *z_alloc(void *opaque, unsigned items, unsigned size)
{
    return ins_calloc(opaque, items, size);
}

static void z_free(void *opaque, void *p)
{
    ins_free(opaque, p);
}

static int cloop_eio(struct cloop_image *ci, uint32_t block, const char *why)
{
    return ins_error(ci->base.ctx, INS_EIO, "cloop block %u: %s", block, why);
}

/* Offsets block and block + 1, through the window.  qemu read the table
 * at open, with zeros past end of file; open checked it the same way. */
static int cloop_offsets(struct cloop_image *ci, uint32_t block,
                         uint64_t *start, uint64_t *end)
{
    if (block < ci->off_first || block + 1 - ci->off_first >= ci->off_count) {
        uint32_t total = ci->n_blocks + 1, n, i;
        uint8_t raw[CLOOP_OFF_WINDOW * 8];

        n = total - block < CLOOP_OFF_WINDOW ? total - block : CLOOP_OFF_WINDOW;
        ci->off_count = 0;
        if (ins_read_zfill(ci->base.file, raw, (size_t)n * 8,
                           CLOOP_OFFSETS_START + (uint64_t)block * 8) < 0)
            return cloop_eio(ci, block, "could not read its offset");
        for (i = 0; i < n; i++)
            ci->off[i] = ins_be64(raw + 8 * (size_t)i);
        ci->off_first = block;
        ci->off_count = n;
    }
    *start = ci->off[block - ci->off_first];
    *end = ci->off[block + 1 - ci->off_first];
    return INS_OK;
}

/* cloop_read_block(): inflate one block unless it is the current one. */
static int cloop_load_block(struct cloop_image *ci, uint32_t block)
{
    struct ins_ctx *ctx = ci->base.ctx;
    uint64_t start, end, pos, left;
    int rc, zr = Z_OK;

    if (ci->current == block)
        return INS_OK;
    rc = cloop_offsets(ci, block, &start, &end);
    if (rc < 0)
        return rc;
    /* Open saw these; check again rather than trust it. */
    if (end < start || end - start > 2ull * CLOOP_MAX_BLOCK_SIZE)
        return cloop_eio(ci, block, "invalid compressed size");
    left = end - start;
    /* qemu reads the compressed block in one request. */
    if (left > BDRV_REQUEST_MAX_BYTES || start > BDRV_MAX_LENGTH - left)
        return cloop_eio(ci, block, "offset out of range");
    if (!ci->block)
        ci->block = ins_malloc(ctx, ci->block_size);
    if (!ci->in)
        ci->in = ins_malloc(ctx, CLOOP_IN_CHUNK);
    if (!ci->block || !ci->in)
        return ins_error(ctx, INS_ENOMEM, "Out of memory");
    if (!ci->zs_ready) {
        memset(&ci->zs, 0, sizeof(ci->zs));
        ci->zs.zalloc = z_alloc;
        ci->zs.zfree = z_free;
        ci->zs.opaque = ctx;
        if (inflateInit(&ci->zs) != Z_OK)
            return ins_error(ctx, INS_ENOMEM, "Out of memory");
        ci->zs_ready = 1;
    }
    ci->current = ci->n_blocks;     /* the buffer is about to change */
    if (inflateReset(&ci->zs) != Z_OK)
        return cloop_eio(ci, block, "zlib reset failed");
    ci->zs.next_out = ci->block;
    ci->zs.avail_out = ci->block_size;
    ci->zs.avail_in = 0;
    pos = start;
    /*
     * qemu inflates the whole block in one call with Z_FINISH; feeding it
     * in pieces ends the same way: Z_STREAM_END only for a stream that
     * ends within the compressed bytes and the block's size.  The output
     * buffer is block_size bytes: nothing inflates past it.
     */
    for (;;) {
        if (ci->zs.avail_in == 0 && left > 0) {
            size_t n = left < CLOOP_IN_CHUNK ? (size_t)left : CLOOP_IN_CHUNK;

            if (ins_read_zfill(ci->base.file, ci->in, n, pos) < 0)
                return cloop_eio(ci, block, "read failed");
            ci->zs.next_in = ci->in;
            ci->zs.avail_in = (uInt)n;
            pos += n;
            left -= n;
        }
        zr = inflate(&ci->zs, left == 0 ? Z_FINISH : Z_NO_FLUSH);
        if (zr != Z_OK)
            break;
    }
    if (zr != Z_STREAM_END || ci->zs.total_out != ci->block_size)
        return cloop_eio(ci, block, "corrupt compressed data");
    ci->current = block;
    return INS_OK;
}

/* No block status in qemu's driver: everything is data. */
static int cloop_block_status(struct ins_image *img, uint64_t offset,
                              uint64_t bytes, struct ins_bstat *st)
{
    (void)img; (void)offset;
    st->pnum = bytes;
    return INS_BS_DATA;
}

static int cloop_read(struct ins_image *img, void *buf, size_t len,
                      uint64_t offset)
{
    struct cloop_image *ci = (struct cloop_image *)img;
    uint8_t *p = buf;

    while (len > 0) {
        uint64_t block = offset / ci->block_size;
        uint32_t in_block = (uint32_t)(offset % ci->block_size);
        size_t n = ci->block_size - in_block < len ? ci->block_size - in_block : len;
        int rc;

        if (block >= ci->n_blocks)      /* the read layer stops at the size */
            return cloop_eio(ci, ci->n_blocks, "past the last block");
        rc = cloop_load_block(ci, (uint32_t)block);
        if (rc < 0)
            return rc;
        memcpy(p, ci->block + in_block, n);
        p += n;
        offset += n;
        len -= n;
    }
    return INS_OK;
}

const struct ins_driver ins_drv_cloop = {
    .name = "cloop",
    .probe = cloop_probe,
    .open = cloop_open,
    .info = cloop_info,
    .close = cloop_close,
    .block_status = cloop_block_status,
    .read = cloop_read,
};

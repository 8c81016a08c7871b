/*
 * cloop.c - compressed loopback images (Knoppix's cloop, V2.0).
 *
 * A shell-script preamble, then at byte 128 the big-endian block size and
 * block count, then n_blocks + 1 offsets of zlib-compressed blocks.  The
 * probe is weak (score 2: a shell script could start the same way).
 * qemu bounds the block size (64 MiB), the offsets table (512 MiB) and
 * each compressed block (128 MiB), and needs the offsets to increase; we
 * check the table in chunks instead of loading it.  Reading (inflating
 * blocks) is not implemented: info needs none of it.
 */
#include "engine.h"

#include <string.h>

#define CLOOP_MAGIC \
    "#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n"
#define CLOOP_MAX_BLOCK_SIZE    (64u * 1024 * 1024)
#define CLOOP_MAX_OFFSETS_SIZE  (512u * 1024 * 1024)
#define CLOOP_HEADER_OFFSET     128

struct cloop_image {
    struct ins_image base;
    uint32_t block_size;
    uint32_t n_blocks;
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
    if (img)
        ins_free(img->ctx, img);
}

const struct ins_driver ins_drv_cloop = {
    .name = "cloop",
    .probe = cloop_probe,
    .open = cloop_open,
    .info = cloop_info,
    .close = cloop_close,
};

/*
 * dd.c - the copy loop of qemu-img dd.
 *
 * qemu reads and writes one bs-sized block at a time; the content that
 * lands in the target does not depend on the block size, so we move
 * larger pieces, aligned to the writer's granularity as writers want.
 * The last piece is padded with zeros to a whole sector, as qemu's
 * sector-based block layer writes it.  That reaches the end of every
 * target whose size is the copy's length rounded to a sector (the
 * writers' "except where the image ends"); vpc and vhdx, whose images
 * can be larger, take any sector-aligned write.  The target is new, so
 * the padding reads as zeros anyway.
 */
#include <string.h>

#include "dd.h"

#define DD_CHUNK (4u << 20)

int ins_op_dd(struct ins_ctx *ctx, struct ins_image *src, uint64_t in_off,
              uint64_t len, struct ins_wimage *out)
{
    uint64_t gran = out->granularity ? out->granularity : 512;
    uint64_t chunk, done = 0;
    uint8_t *buf;
    int rc = INS_OK;

    if (len > out->virtual_size)
        return ins_error(ctx, INS_EINVAL, "error while writing to output "
                         "image file: %s", ins_strerror(INS_EINVAL));
    /* Whole granules per piece, at least one (vhdx blocks reach 256 MiB). */
    chunk = DD_CHUNK / gran * gran;
    if (chunk == 0)
        chunk = gran;
    if (chunk > 256u << 20)
        return ins_error(ctx, INS_ENOMEM, "Cannot allocate memory");
    buf = ins_malloc(ctx, (size_t)chunk);
    if (!buf)
        return ins_error(ctx, INS_ENOMEM, "Cannot allocate memory");

    while (done < len) {
        uint64_t n = len - done < chunk ? len - done : chunk;
        uint64_t wlen = n;

        rc = ins_image_read(src, buf, (size_t)n, in_off + done);
        if (rc < 0) {
            ins_error(ctx, rc, "error while reading from input image file: %s",
                      ins_strerror(rc));
            break;
        }
        if (wlen % 512) {
            /* The tail, to a whole sector. */
            uint64_t end = (done + wlen + 511) / 512 * 512;

            memset(buf + wlen, 0, (size_t)(end - done - wlen));
            wlen = end - done;
        }
        rc = out->wr->write(out, buf, (size_t)wlen, done);
        if (rc < 0) {
            ins_error(ctx, rc, "error while writing to output image file: %s",
                      ins_strerror(rc));
            break;
        }
        done += n;
    }
    ins_free(ctx, buf);
    return rc;
}

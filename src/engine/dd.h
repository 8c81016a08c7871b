/*
 * dd.h - qemu-img dd's copy: guest bytes [in_off, in_off + len) of an
 * image, written from offset 0 on into a new image.
 */
#ifndef INSTAR_DD_H
#define INSTAR_DD_H

#include "writer.h"

/*
 * Copies every byte, zeros included (qemu-img dd writes each block it
 * reads, so a sparse target allocates all of them), in ascending order.
 * Returns INS_OK, or INS_E* with qemu's message in ctx->errmsg
 * ("error while reading from input image file: ...", "error while
 * writing to output image file: ...").
 */
int ins_op_dd(struct ins_ctx *ctx, struct ins_image *src, uint64_t in_off,
              uint64_t len, struct ins_wimage *out);

#endif

/*
 * luks.h - LUKS header parsing shared by the luks driver and qcow2's
 * LUKS encryption (whose LUKS header lives inside the qcow2 file).
 */
#ifndef INSTAR_LUKS_H
#define INSTAR_LUKS_H

#include "engine.h"

/*
 * Parses the LUKS (v1 or v2) header that starts at `offset` in `file` and
 * builds qemu's QCryptoBlockInfoLUKS members (cipher-alg, cipher-mode,
 * ivgen-alg, ivgen-hash-alg, hash-alg, detached-header, payload-offset,
 * master-key-iters, uuid, slots, ...) into `dict`, in qemu's order.
 * On success *payload_offset (may be NULL) receives the payload offset in
 * bytes.  Returns INS_OK or INS_E* with ctx->errmsg set in qemu's words.
 */
int ins_luks_describe(struct ins_ctx *ctx, struct ins_bdev *file,
                      uint64_t offset, struct tree_builder *tb,
                      struct tree *dict, uint64_t *payload_offset);

#endif

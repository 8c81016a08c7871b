/*
 * check.h - qemu-img check: structural validation and repair.
 *
 * Drivers implement ins_driver.check (qemu's bdrv_co_check) and fill a
 * struct ins_check_result (engine.h).  ins_op_check runs it and turns the
 * result into the tree the host renders as qemu-img's ImageCheck.
 * Lines qemu writes to stderr while checking ("Leaked cluster 9
 * refcount=1 reference=0", "ERROR cluster 5 refcount=0 reference=1",
 * "Repairing ...") go through ins_check_msg: they reach the host's
 * stderr in order, streamed, so memory stays bounded however many the
 * image has.
 */
#ifndef INSTAR_CHECK_H
#define INSTAR_CHECK_H

#include "engine.h"

/* One stderr line (without its newline), printf-style.  Never fails: a
 * line that cannot be sent is dropped (the counters still say it). */
void ins_check_msg(struct ins_ctx *ctx, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* The same for a line qemu prints with error_report(): the host puts
 * its program name in front ("qemu-img: ERROR snapshot table too large"). */
void ins_check_report(struct ins_ctx *ctx, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/*
 * A batch of stderr lines for a check that may print very many (one
 * partial result per line would cost more than the check): lines collect
 * in a buffer sent as one multi-line partial when it fills, and on flush.
 */
struct ins_check_log {
    struct ins_ctx *ctx;
    char *buf;                  /* NULL: no memory, lines go one by one */
    size_t len;
    uint64_t lines;             /* lines logged so far */
};
#define INS_CHECK_LOG_SIZE (64u << 10)

void ins_check_log_init(struct ins_check_log *log, struct ins_ctx *ctx);
void ins_check_logf(struct ins_check_log *log, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* An error_report() line (program name in front), after the batch. */
void ins_check_log_report(struct ins_check_log *log, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void ins_check_log_flush(struct ins_check_log *log);
/* Flushes and frees. */
void ins_check_log_free(struct ins_check_log *log);

/* Sends the lines ins_check_msg buffered (ins_op_check does it at the end). */
void ins_check_msg_flush(struct ins_ctx *ctx);

/*
 * Runs img's driver check.  Returns INS_OK with res filled, INS_ENOTSUP
 * when the format has no check (qemu-img: "This image format does not
 * support checks", exit 63), or another INS_E* with ctx->errmsg.
 */
int ins_op_check(struct ins_ctx *ctx, struct ins_image *img, unsigned fix,
                 struct ins_check_result *res);

#endif

/*
 * check.c - runs a driver's check and relays its stderr lines.
 */
#include <stdio.h>
#include <string.h>

#include "check.h"

void ins_check_msg(struct ins_ctx *ctx, const char *fmt, ...)
{
    struct tree_builder tb;
    struct tree *part;
    char line[1024];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    if (!ctx->emit)
        return;
    tree_builder_init(&tb, ctx->alloc);
    part = tree_new_dict(&tb);
    tree_put_str(&tb, part, "stderr", line);
    if (!tb.failed)
        ctx->emit(ctx, part);
    tree_free(ctx->alloc, part);
}

void ins_check_msg_flush(struct ins_ctx *ctx)
{
    (void)ctx;
}

int ins_op_check(struct ins_ctx *ctx, struct ins_image *img, unsigned fix,
                 struct ins_check_result *res)
{
    int rc;

    memset(res, 0, sizeof(*res));
    if (!img->drv->check)
        return ins_error(ctx, INS_ENOTSUP,
                         "This image format does not support checks");
    rc = img->drv->check(img, fix, res);
    ins_check_msg_flush(ctx);
    return rc;
}

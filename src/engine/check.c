/*
 * check.c - runs a driver's check and relays its stderr lines.
 */
#include <stdio.h>
#include <string.h>

#include "check.h"

static void send_line(struct ins_ctx *ctx, int report, const char *fmt,
                      va_list ap)
{
    struct tree_builder tb;
    struct tree *part;
    char line[1024];

    vsnprintf(line, sizeof(line), fmt, ap);
    if (!ctx->emit)
        return;
    tree_builder_init(&tb, ctx->alloc);
    part = tree_new_dict(&tb);
    tree_put_str(&tb, part, "stderr", line);
    if (report)
        tree_put_bool(&tb, part, "report", 1);
    if (!tb.failed)
        ctx->emit(ctx, part);
    tree_free(ctx->alloc, part);
}

void ins_check_msg(struct ins_ctx *ctx, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    send_line(ctx, 0, fmt, ap);
    va_end(ap);
}

void ins_check_report(struct ins_ctx *ctx, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    send_line(ctx, 1, fmt, ap);
    va_end(ap);
}

static void send_text(struct ins_ctx *ctx, const char *text, size_t len)
{
    struct tree_builder tb;
    struct tree *part;

    if (!ctx->emit)
        return;
    tree_builder_init(&tb, ctx->alloc);
    part = tree_new_dict(&tb);
    tree_put(&tb, part, "stderr", tree_new_strn(&tb, text, len));
    if (!tb.failed)
        ctx->emit(ctx, part);
    tree_free(ctx->alloc, part);
}

void ins_check_log_init(struct ins_check_log *log, struct ins_ctx *ctx)
{
    log->ctx = ctx;
    log->len = 0;
    log->lines = 0;
    log->buf = ins_malloc(ctx, INS_CHECK_LOG_SIZE);
}

void ins_check_log_flush(struct ins_check_log *log)
{
    if (log->buf && log->len) {
        /* The host adds the final newline. */
        send_text(log->ctx, log->buf, log->len - 1);
        log->len = 0;
    }
}

void ins_check_logf(struct ins_check_log *log, const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    int n;

    log->lines++;
    va_start(ap, fmt);
    if (!log->buf) {
        send_line(log->ctx, 0, fmt, ap);
        va_end(ap);
        return;
    }
    n = vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n >= sizeof(line))
        n = sizeof(line) - 1;
    if (log->len + (size_t)n + 1 > INS_CHECK_LOG_SIZE)
        ins_check_log_flush(log);
    memcpy(log->buf + log->len, line, (size_t)n);
    log->len += (size_t)n;
    log->buf[log->len++] = '\n';
}

void ins_check_log_report(struct ins_check_log *log, const char *fmt, ...)
{
    va_list ap;

    ins_check_log_flush(log);
    log->lines++;
    va_start(ap, fmt);
    send_line(log->ctx, 1, fmt, ap);
    va_end(ap);
}

void ins_check_log_free(struct ins_check_log *log)
{
    ins_check_log_flush(log);
    ins_free(log->ctx, log->buf);
    log->buf = NULL;
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

/*
 * util.c - block reads, errors, allocation and path helpers for the engine.
 */
#include "engine.h"

#include <stdio.h>
#include <string.h>

int ins_read(struct ins_bdev *bd, void *buf, size_t len, uint64_t offset)
{
    int64_t got;

    if (len == 0)
        return INS_OK;
    if (len > INT64_MAX || offset > bd->size || len > bd->size - offset)
        return INS_EIO;
    got = bd->pread(bd->opaque, buf, len, offset);
    if (got < 0)
        return (int)got;
    return (uint64_t)got == len ? INS_OK : INS_EIO;
}

int ins_read_zfill(struct ins_bdev *bd, void *buf, size_t len,
                   uint64_t offset)
{
    size_t avail = 0;
    int64_t got;

    if (offset < bd->size)
        avail = bd->size - offset < len ? (size_t)(bd->size - offset) : len;
    if (avail) {
        got = bd->pread(bd->opaque, buf, avail, offset);
        if (got < 0)
            return (int)got;
        avail = (size_t)got;
    }
    memset((uint8_t *)buf + avail, 0, len - avail);
    return INS_OK;
}

int ins_error(struct ins_ctx *ctx, int err, const char *fmt, ...)
{
    va_list ap;

    ctx->errmsg_plain = 0;
    va_start(ap, fmt);
    vsnprintf(ctx->errmsg, sizeof(ctx->errmsg), fmt, ap);
    va_end(ap);
    return err;
}

const char *ins_strerror(int err)
{
    switch (err) {
    case INS_EINVAL: return "Invalid argument";
    case INS_ENOMEM: return "Cannot allocate memory";
    case INS_ENOTSUP: return "Operation not supported";
    case INS_EREFUSED: return "Operation not permitted";
    case INS_ENOENT: return "No such file or directory";
    case INS_EFBIG: return "File too large";
    case INS_EBUSY: return "Device or resource busy";
    default: return "Input/output error";
    }
}

int ins_error_plain(struct ins_ctx *ctx, int err, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(ctx->errmsg, sizeof(ctx->errmsg), fmt, ap);
    va_end(ap);
    ctx->errmsg_plain = 1;
    return err;
}

void *ins_malloc(struct ins_ctx *ctx, size_t size)
{
    return ctx->alloc->alloc(ctx->alloc->opaque, size);
}

void *ins_calloc(struct ins_ctx *ctx, size_t n, size_t size)
{
    size_t total;
    void *p;

    if (__builtin_mul_overflow(n, size, &total))
        return NULL;
    p = ins_malloc(ctx, total);
    if (p)
        memset(p, 0, total);
    return p;
}

void *ins_realloc(struct ins_ctx *ctx, void *ptr, size_t size)
{
    return ctx->alloc->realloc(ctx->alloc->opaque, ptr, size);
}

void ins_free(struct ins_ctx *ctx, void *ptr)
{
    if (ptr)
        ctx->alloc->free(ctx->alloc->opaque, ptr);
}

char *ins_strndup(struct ins_ctx *ctx, const char *s, size_t n)
{
    size_t len = strnlen(s, n);
    char *copy = ins_malloc(ctx, len + 1);

    if (copy) {
        memcpy(copy, s, len);
        copy[len] = '\0';
    }
    return copy;
}

char *ins_strdup(struct ins_ctx *ctx, const char *s)
{
    return ins_strndup(ctx, s, strlen(s));
}

/* True for "proto:rest" before any '/', as qemu's path_has_protocol(). */
static int has_protocol(const char *path)
{
    const char *p = strpbrk(path, ":/");

    return p && *p == ':';
}

char *ins_path_combine(struct ins_ctx *ctx, const char *base,
                       const char *name)
{
    const char *slash;
    size_t dirlen;
    char *out;

    if (name[0] == '/' || has_protocol(name) || !(slash = strrchr(base, '/')))
        return ins_strdup(ctx, name);
    dirlen = (size_t)(slash - base) + 1;
    out = ins_malloc(ctx, dirlen + strlen(name) + 1);
    if (!out)
        return NULL;
    memcpy(out, base, dirlen);
    strcpy(out + dirlen, name);
    return out;
}

int ins_write(struct ins_bdev *bd, const void *buf, size_t len,
              uint64_t offset)
{
    uint64_t end;
    int64_t put;

    if (!bd->pwrite)
        return INS_ENOTSUP;
    if (len == 0)
        return INS_OK;
    if (len > INT64_MAX || ins_add_overflow(offset, len, &end) ||
        end > INT64_MAX)
        return INS_EFBIG;
    put = bd->pwrite(bd->opaque, buf, len, offset);
    if (put < 0)
        return (int)put;
    if ((uint64_t)put != len)
        return INS_EIO;
    if (end > bd->size)
        bd->size = end;
    return INS_OK;
}

int ins_flush(struct ins_bdev *bd)
{
    if (!bd->pwrite)
        return INS_ENOTSUP;
    return bd->flush ? bd->flush(bd->opaque) : INS_OK;
}

int ins_truncate(struct ins_bdev *bd, uint64_t size)
{
    int rc;

    if (!bd->pwrite || !bd->truncate)
        return INS_ENOTSUP;
    if (size > INT64_MAX)
        return INS_EFBIG;
    rc = bd->truncate(bd->opaque, size);
    if (rc == INS_OK)
        bd->size = size;
    return rc;
}

int ins_zero_range(struct ins_bdev *bd, uint64_t offset, uint64_t len)
{
    static const uint8_t zeros[65536];
    uint64_t end;
    int rc;

    if (!bd->pwrite)
        return INS_ENOTSUP;
    if (ins_add_overflow(offset, len, &end) || end > INT64_MAX)
        return INS_EFBIG;
    /* Past the end of the file everything reads as zeros already. */
    if (end > bd->size)
        end = bd->size;
    if (offset >= end)
        return INS_OK;
    if (bd->punch && bd->punch(bd->opaque, offset, end - offset) == INS_OK)
        return INS_OK;
    while (offset < end) {
        size_t n = end - offset < sizeof(zeros) ? (size_t)(end - offset)
                                                : sizeof(zeros);
        rc = ins_write(bd, zeros, n, offset);
        if (rc < 0)
            return rc;
        offset += n;
    }
    return INS_OK;
}

/*
 * fuzz_common.h - what every libFuzzer target shares: an allocator with a
 * cap, and an in-memory block device over the fuzzer's input.
 *
 * The cap turns an allocation bomb into a failed allocation (which the
 * engine must handle) instead of an out-of-memory kill: the worker's
 * address-space limit does the same in production.  A single allocation
 * above FUZZ_ALLOC_MAX, or live bytes above FUZZ_LIVE_MAX, fail.
 */
#ifndef INSTAR_FUZZ_COMMON_H
#define INSTAR_FUZZ_COMMON_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/engine.h"

#define FUZZ_ALLOC_MAX (256u << 20)
#define FUZZ_LIVE_MAX  (256u << 20)

struct fuzz_heap {
    size_t live;            /* bytes handed out and not yet freed */
};

/* Each block carries its size in front, so free and realloc can account. */
#define FUZZ_HDR 16

static void *fuzz_alloc(void *opaque, size_t size)
{
    struct fuzz_heap *h = opaque;
    uint8_t *p;

    if (size > FUZZ_ALLOC_MAX || h->live + size > FUZZ_LIVE_MAX)
        return NULL;
    p = malloc(size + FUZZ_HDR);
    if (!p)
        return NULL;
    memcpy(p, &size, sizeof(size));
    h->live += size;
    return p + FUZZ_HDR;
}

static void fuzz_free(void *opaque, void *ptr)
{
    struct fuzz_heap *h = opaque;
    uint8_t *p;
    size_t size;

    if (!ptr)
        return;
    p = (uint8_t *)ptr - FUZZ_HDR;
    memcpy(&size, p, sizeof(size));
    h->live -= size;
    free(p);
}

static void *fuzz_realloc(void *opaque, void *ptr, size_t size)
{
    struct fuzz_heap *h = opaque;
    uint8_t *p, *q;
    size_t old;

    if (!ptr)
        return fuzz_alloc(opaque, size);
    p = (uint8_t *)ptr - FUZZ_HDR;
    memcpy(&old, p, sizeof(old));
    if (size > FUZZ_ALLOC_MAX || h->live - old + size > FUZZ_LIVE_MAX)
        return NULL;
    q = realloc(p, size + FUZZ_HDR);
    if (!q)
        return NULL;
    memcpy(q, &size, sizeof(size));
    h->live = h->live - old + size;
    return q + FUZZ_HDR;
}

static inline void fuzz_heap_init(struct fuzz_heap *h, struct ins_alloc *a)
{
    h->live = 0;
    a->opaque = h;
    a->alloc = fuzz_alloc;
    a->realloc = fuzz_realloc;
    a->free = fuzz_free;
}

/* ---- an in-memory, read-only block device ---- */

struct fuzz_mem {
    const uint8_t *data;
    size_t len;
};

static int64_t fuzz_pread(void *opaque, void *buf, size_t len, uint64_t off)
{
    struct fuzz_mem *m = opaque;

    if (off >= m->len)
        return 0;
    if (len > m->len - off)
        len = m->len - off;
    memcpy(buf, m->data + off, len);
    return (int64_t)len;
}

static inline void fuzz_bdev_init(struct ins_bdev *bd, struct fuzz_mem *m,
                                  const uint8_t *data, size_t len,
                                  const char *name)
{
    m->data = data;
    m->len = len;
    memset(bd, 0, sizeof(*bd));
    bd->opaque = m;
    bd->pread = fuzz_pread;
    bd->size = len;
    bd->allocated = len;
    bd->name = name;
}

#endif

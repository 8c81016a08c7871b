/* membdev.h - an in-memory block device for the C unit tests. */
#ifndef INSTAR_MEMBDEV_H
#define INSTAR_MEMBDEV_H

#include <string.h>

#include "engine/engine.h"

struct membuf {
    const uint8_t *data;
    size_t len;
};

static inline int64_t mem_pread(void *opaque, void *buf, size_t len, uint64_t off)
{
    struct membuf *m = opaque;

    if (off >= m->len)
        return 0;
    if (len > m->len - off)
        len = m->len - off;
    memcpy(buf, m->data + off, len);
    return (int64_t)len;
}

#endif

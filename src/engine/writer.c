/*
 * writer.c - the table of format writers.
 */
#include <string.h>

#include "writer.h"

static const struct ins_writer *const writers[] = {
    &ins_wr_raw, &ins_wr_qcow2, &ins_wr_vmdk, &ins_wr_vpc, &ins_wr_vhdx,
    &ins_wr_vdi,
};

int ins_grow_empty(struct ins_bdev *bd, uint64_t size)
{
    static const uint8_t zeros[4096];
    int rc = ins_truncate(bd, size);

    if (rc == 0 && size > 0)
        rc = ins_write(bd, zeros, size < sizeof(zeros) ? 512 : sizeof(zeros), 0);
    return rc;
}

int ins_wdata(struct ins_wimage *img, const void *buf, size_t len,
              uint64_t off)
{
    struct ins_wdefer *d = img->defer;

    if (!d)
        return ins_write(img->out, buf, len, off);
    if (len == 0)
        return INS_OK;
    if (d->n == d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 16;
        struct ins_wdefer_item *ni = ins_realloc(img->ctx, d->items,
                                                 cap * sizeof(*ni));

        if (!ni)
            return ins_error(img->ctx, INS_ENOMEM, "Out of memory");
        d->items = ni;
        d->cap = cap;
    }
    d->items[d->n].buf = buf;
    d->items[d->n].len = len;
    d->items[d->n].off = off;
    d->items[d->n].guest = d->guest;
    d->n++;
    return INS_OK;
}

int ins_wdefer_run(struct ins_wimage *img, const struct ins_wdefer *d,
                   uint64_t *end, size_t *failed)
{
    struct ins_bdev *bd = img->out;

    for (size_t i = 0; i < d->n; i++) {
        const struct ins_wdefer_item *it = &d->items[i];
        uint64_t e;
        int64_t put;

        *failed = i;
        if (it->len > INT64_MAX || ins_add_overflow(it->off, it->len, &e) ||
            e > INT64_MAX)
            return INS_EFBIG;
        put = bd->pwrite(bd->opaque, it->buf, it->len, it->off);
        if (put < 0)
            return (int)put;
        if ((uint64_t)put != it->len)
            return INS_EIO;
        if (e > *end)
            *end = e;
    }
    return INS_OK;
}

const struct ins_writer *ins_find_writer(const char *name)
{
    for (size_t i = 0; i < sizeof(writers) / sizeof(writers[0]); i++)
        if (strcmp(writers[i]->name, name) == 0 && writers[i]->create)
            return writers[i];
    return NULL;
}

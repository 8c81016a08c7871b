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

const struct ins_writer *ins_find_writer(const char *name)
{
    for (size_t i = 0; i < sizeof(writers) / sizeof(writers[0]); i++)
        if (strcmp(writers[i]->name, name) == 0 && writers[i]->create)
            return writers[i];
    return NULL;
}

/*
 * writer.c - the table of format writers.
 */
#include <string.h>

#include "writer.h"

static const struct ins_writer *const writers[] = {
    &ins_wr_raw, &ins_wr_qcow2, &ins_wr_vmdk, &ins_wr_vpc, &ins_wr_vhdx,
    &ins_wr_vdi,
};

const struct ins_writer *ins_find_writer(const char *name)
{
    for (size_t i = 0; i < sizeof(writers) / sizeof(writers[0]); i++)
        if (strcmp(writers[i]->name, name) == 0 && writers[i]->create)
            return writers[i];
    return NULL;
}

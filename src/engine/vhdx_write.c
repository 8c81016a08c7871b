/*
 * vhdx_write.c - writing vhdx images (being written).
 */
#include "writer.h"

const struct ins_writer ins_wr_vhdx = {
    .name = "vhdx",
};

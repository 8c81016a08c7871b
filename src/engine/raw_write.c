/*
 * raw_write.c - writing raw images (being written).
 */
#include "writer.h"

const struct ins_writer ins_wr_raw = {
    .name = "raw",
};

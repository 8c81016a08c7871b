/*
 * vpc_write.c - writing vpc images (being written).
 */
#include "writer.h"

const struct ins_writer ins_wr_vpc = {
    .name = "vpc",
};

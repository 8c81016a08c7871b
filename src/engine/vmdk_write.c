/*
 * vmdk_write.c - writing vmdk images (being written).
 */
#include "writer.h"

const struct ins_writer ins_wr_vmdk = {
    .name = "vmdk",
};

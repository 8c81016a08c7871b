/*
 * vdi_write.c - writing vdi images (being written).
 */
#include "writer.h"

const struct ins_writer ins_wr_vdi = {
    .name = "vdi",
};

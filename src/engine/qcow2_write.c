/*
 * qcow2_write.c - writing qcow2 images (being written).
 */
#include "writer.h"

const struct ins_writer ins_wr_qcow2 = {
    .name = "qcow2",
};

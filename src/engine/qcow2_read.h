/*
 * qcow2_read.h - the qcow2 driver's read layer (qcow2_read.c).
 */
#ifndef INSTAR_QCOW2_READ_H
#define INSTAR_QCOW2_READ_H

#include "qcow2.h"

int qcow2_block_status(struct ins_image *img, uint64_t offset, uint64_t bytes,
                       struct ins_bstat *bs);
int qcow2_read(struct ins_image *img, void *buf, size_t len, uint64_t offset);
/* The driver's load_snapshot hook (qemu's qcow2_snapshot_load_tmp). */
int qcow2_load_snapshot(struct ins_image *img, const char *id,
                        const char *name);
/* The driver's check hook (qcow2_check.c): qemu's qcow2_co_check. */
int qcow2_check(struct ins_image *img, unsigned fix,
                struct ins_check_result *res);
/* Frees the read state (called from the driver's close). */
void qcow2_reader_free(struct qcow2_image *st);

#endif

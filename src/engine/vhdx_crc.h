/* vhdx_crc.h - the VHDX checksum, shared by the reader and the writer. */
#ifndef INSTAR_VHDX_CRC_H
#define INSTAR_VHDX_CRC_H

#include <stddef.h>
#include <stdint.h>

/* CRC-32C of buf[0..n) with the 4-byte checksum field at offset 4 read as
 * zero, as VHDX headers, region tables and log entries store it. */
uint32_t ins_vhdx_checksum(const uint8_t *buf, size_t n);

#endif

/*
 * stream.h - a block device over a forward-only descriptor (a pipe or
 * socket: an upload arriving on standard input), for `inspect -`.
 *
 * Reads go forward on demand.  The first `retain` bytes are kept, so the
 * engine may read anywhere in them as often as it likes; past that, data
 * is read and dropped, except for the last STREAM_TAIL bytes, so that the
 * end of the input (a footer) can still be read once it has arrived.  A
 * read of dropped data fails (INS_EIO) and is remembered: the caller
 * reports that the input could not be judged within the limit.
 *
 * Until the end has been seen the device's size is unknown: bd->size is
 * STREAM_SIZE_UNKNOWN (larger than any real input), and becomes the exact
 * length once a read reaches the end of the input or stream_drain() ran.
 */
#ifndef INSTAR_STREAM_H
#define INSTAR_STREAM_H

#include "../engine/inspect.h"

#define STREAM_SIZE_UNKNOWN (UINT64_C(1) << 62)
#define STREAM_TAIL         (UINT64_C(1) << 20)     /* bytes kept at the end */
#define STREAM_PREFETCH     INS_INSPECT_STREAM_HEAD /* read before detection */
#define STREAM_DEFAULT_RETAIN (UINT64_C(64) << 20)

struct stream;

/* Sets bd up over fd and reads the first STREAM_PREFETCH bytes (or all
 * of a shorter input).  retain: bytes kept from the start. */
int stream_bdev_init(struct ins_bdev *bd, int fd, const char *name,
                     uint64_t retain, struct stream **out);

/* Reads to the end of the input: bd->size becomes exact. */
int stream_drain(struct stream *s);

/* Whether a read asked for data that was dropped. */
int stream_gap_hit(const struct stream *s);

/* Bytes read from the descriptor so far. */
uint64_t stream_bytes_read(const struct stream *s);

/* Frees what the device holds (not the descriptor). */
void stream_free(struct stream *s);

#endif

/*
 * stream.c - a block device over a forward-only descriptor (see stream.h).
 *
 * Memory is bounded by retain + STREAM_TAIL whatever the input's length;
 * the input is read in chunks as the engine asks for bytes further on.
 */
#include "stream.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CHUNK (64u << 10)

struct stream {
    struct ins_bdev *bd;
    int fd;
    uint64_t pos;           /* bytes read from fd so far */
    int eof;
    int gap_hit;
    uint8_t *head;          /* bytes [0, head_len) */
    uint64_t head_len, head_cap, retain;
    uint8_t *tail;          /* ring of the last STREAM_TAIL bytes read past retain */
    uint64_t tail_len;      /* valid bytes in the ring (<= STREAM_TAIL) */
};

/* Keeps bytes that arrived at stream offset `at`. */
static int keep(struct stream *s, const uint8_t *p, size_t n, uint64_t at)
{
    while (n > 0 && at < s->retain) {
        size_t take = s->retain - at < n ? (size_t)(s->retain - at) : n;

        if (s->head_len + take > s->head_cap) {
            uint64_t cap = s->head_cap ? s->head_cap : CHUNK;
            uint8_t *nb;

            while (cap < s->head_len + take)
                cap *= 2;
            if (cap > s->retain)
                cap = s->retain;
            nb = realloc(s->head, (size_t)cap);
            if (!nb)
                return INS_ENOMEM;
            s->head = nb;
            s->head_cap = cap;
        }
        memcpy(s->head + s->head_len, p, take);
        s->head_len += take;
        p += take;
        n -= take;
        at += take;
    }
    while (n > 0) {
        /* Ring position of stream offset `at`. */
        uint64_t slot = (at - s->retain) % STREAM_TAIL;
        size_t take = STREAM_TAIL - slot < n ? (size_t)(STREAM_TAIL - slot) : n;

        if (!s->tail) {
            s->tail = malloc(STREAM_TAIL);
            if (!s->tail)
                return INS_ENOMEM;
        }
        memcpy(s->tail + slot, p, take);
        s->tail_len = s->tail_len + take > STREAM_TAIL ? STREAM_TAIL
                                                       : s->tail_len + take;
        p += take;
        n -= take;
        at += take;
    }
    return INS_OK;
}

/* Reads forward until `until` bytes have arrived or the input ends. */
static int fill(struct stream *s, uint64_t until)
{
    uint8_t buf[CHUNK];

    while (!s->eof && s->pos < until) {
        ssize_t n = read(s->fd, buf, sizeof(buf));
        int rc;

        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return INS_EIO;
        if (n == 0) {
            s->eof = 1;
            s->bd->size = s->pos;
            break;
        }
        rc = keep(s, buf, (size_t)n, s->pos);
        if (rc < 0)
            return rc;
        s->pos += (uint64_t)n;
    }
    return INS_OK;
}

/* Copies what is kept of [offset, offset + len); 0, or INS_EIO on a gap. */
static int copy_kept(struct stream *s, uint8_t *dst, size_t len,
                     uint64_t offset)
{
    uint64_t tail_start = s->pos - s->tail_len;

    while (len > 0) {
        size_t take;

        if (offset < s->head_len) {
            take = s->head_len - offset < len ? (size_t)(s->head_len - offset) : len;
            memcpy(dst, s->head + offset, take);
        } else if (s->tail_len && offset >= tail_start && offset >= s->retain) {
            uint64_t slot = (offset - s->retain) % STREAM_TAIL;

            take = STREAM_TAIL - slot < len ? (size_t)(STREAM_TAIL - slot) : len;
            memcpy(dst, s->tail + slot, take);
        } else {
            s->gap_hit = 1;
            return INS_EIO;
        }
        dst += take;
        offset += take;
        len -= take;
    }
    return INS_OK;
}

static int64_t stream_pread(void *opaque, void *buf, size_t len,
                            uint64_t offset)
{
    struct stream *s = opaque;
    uint64_t end;
    size_t avail;
    int rc;

    if (len > INT64_MAX || ins_add_overflow(offset, len, &end))
        return INS_EIO;
    rc = fill(s, end);
    if (rc < 0)
        return rc;
    if (offset >= s->pos)
        return 0;
    avail = s->pos - offset < len ? (size_t)(s->pos - offset) : len;
    rc = copy_kept(s, buf, avail, offset);
    return rc < 0 ? rc : (int64_t)avail;
}

int stream_bdev_init(struct ins_bdev *bd, int fd, const char *name,
                     uint64_t retain, struct stream **out)
{
    struct stream *s = calloc(1, sizeof(*s));
    int rc;

    if (!s)
        return INS_ENOMEM;
    memset(bd, 0, sizeof(*bd));
    s->bd = bd;
    s->fd = fd;
    /* The prefetch must stay whole: detection reads anywhere in it. */
    s->retain = retain < STREAM_PREFETCH ? STREAM_PREFETCH : retain;
    bd->opaque = s;
    bd->pread = stream_pread;
    bd->size = STREAM_SIZE_UNKNOWN;
    bd->name = name;
    rc = fill(s, STREAM_PREFETCH);
    if (rc < 0)
        return rc;
    *out = s;
    return INS_OK;
}

int stream_drain(struct stream *s)
{
    return fill(s, UINT64_MAX);
}

int stream_gap_hit(const struct stream *s)
{
    return s->gap_hit;
}

uint64_t stream_bytes_read(const struct stream *s)
{
    return s->pos;
}

void stream_free(struct stream *s)
{
    if (!s)
        return;
    free(s->head);
    free(s->tail);
    free(s);
}

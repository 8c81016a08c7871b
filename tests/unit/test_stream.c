/*
 * test_stream.c - the forward-only block device behind `inspect -`:
 * what it keeps (the head, the last MiB), what it drops (the middle, and
 * says so), and when its size becomes known.
 */
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

#include "check.h"
#include "worker/stream.h"

#define MIB (1u << 20)

static uint8_t pattern(uint64_t i)
{
    return (uint8_t)(i * 2654435761u >> 13);
}

/* A pipe-like descriptor holding len pattern bytes (a temporary file read
 * with read(): the device never seeks). */
static int source(uint64_t len)
{
    FILE *f = tmpfile();
    uint8_t buf[4096];
    uint64_t i = 0;

    if (!f)
        return -1;
    while (i < len) {
        size_t n = len - i < sizeof(buf) ? (size_t)(len - i) : sizeof(buf), k;

        for (k = 0; k < n; k++)
            buf[k] = pattern(i + k);
        fwrite(buf, 1, n, f);
        i += n;
    }
    fflush(f);
    rewind(f);
    return dup(fileno(f));
}

static int matches(const uint8_t *buf, size_t len, uint64_t at)
{
    size_t i;

    for (i = 0; i < len; i++)
        if (buf[i] != pattern(at + i))
            return 0;
    return 1;
}

static void short_stream(void)
{
    struct ins_bdev bd;
    struct stream *s;
    uint8_t buf[300];
    int fd = source(1000);

    /* Shorter than the prefetch: whole, size exact at once. */
    CHECK(stream_bdev_init(&bd, fd, "-", 2 * MIB, &s) == INS_OK);
    CHECK(bd.size == 1000);
    CHECK(ins_read(&bd, buf, 300, 700) == INS_OK && matches(buf, 300, 700));
    CHECK(ins_read(&bd, buf, 300, 701) == INS_EIO);
    CHECK(ins_read_zfill(&bd, buf, 300, 900) == INS_OK && matches(buf, 100, 900) &&
          buf[100] == 0 && buf[299] == 0);
    CHECK(!stream_gap_hit(s));
    stream_free(s);
    close(fd);
}

static void long_stream(void)
{
    uint64_t len = 7 * MIB + 12345;
    struct ins_bdev bd;
    struct stream *s;
    static uint8_t buf[MIB];
    int fd = source(len);

    CHECK(stream_bdev_init(&bd, fd, "-", 2 * MIB, &s) == INS_OK);
    CHECK(bd.size == STREAM_SIZE_UNKNOWN);
    CHECK(stream_bytes_read(s) >= MIB && stream_bytes_read(s) < 2 * MIB);
    /* Inside the kept head, across the prefetch boundary. */
    CHECK(ins_read(&bd, buf, 4096, MIB - 100) == INS_OK &&
          matches(buf, 4096, MIB - 100));
    CHECK(stream_bytes_read(s) < 2 * MIB + 65536);
    /* A read just past the head arrives in the tail ring. */
    CHECK(ins_read(&bd, buf, 1000, 3 * MIB) == INS_OK && matches(buf, 1000, 3 * MIB));
    /* The end: drained, size exact, the last MiB kept. */
    CHECK(stream_drain(s) == INS_OK);
    CHECK(bd.size == len && stream_bytes_read(s) == len);
    CHECK(ins_read(&bd, buf, MIB, len - MIB) == INS_OK && matches(buf, MIB, len - MIB));
    CHECK(!stream_gap_hit(s));
    /* Still the head. */
    CHECK(ins_read(&bd, buf, 512, 0) == INS_OK && matches(buf, 512, 0));
    /* The dropped middle: an error, and remembered. */
    CHECK(ins_read(&bd, buf, 512, 4 * MIB) == INS_EIO);
    CHECK(stream_gap_hit(s));
    /* Past the end: short. */
    CHECK(ins_read(&bd, buf, 10, len - 5) == INS_EIO);
    stream_free(s);
    close(fd);
}

int main(void)
{
    short_stream();
    long_stream();
    return check_report("test_stream");
}

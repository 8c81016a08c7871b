/*
 * compare.c - the compare operation, step for step as qemu-img compare:
 * block status of both images through their chains, reads only where
 * either side has data, a size-mismatch tail that must read as zeros.
 */
#include "engine.h"

#include <stdio.h>
#include <string.h>

#define IO_BUF_SIZE (2u << 20)
#define SECTOR 512u

struct text {
    struct ins_ctx *ctx;
    char *buf;
    size_t len;
    int failed;
    /* qemu's progress meter (-p), in float as qemu keeps it. */
    int progress;
    float current, last_print;
};

static void append(struct text *t, const char *line, int n)
{
    char *grown;

    if (n < 0 || t->failed)
        return;
    grown = ins_realloc(t->ctx, t->buf, t->len + (size_t)n + 1);
    if (!grown) {
        t->failed = 1;
        return;
    }
    memcpy(grown + t->len, line, (size_t)n + 1);
    t->buf = grown;
    t->len += (size_t)n;
}

static void say(struct text *t, const char *fmt, unsigned long long arg)
{
    char line[128];

    append(t, line, snprintf(line, sizeof(line), fmt, arg));
}

/* qemu_progress_print(delta, 100) with a 2% minimum step. */
static void progress(struct text *t, float delta)
{
    char line[64];
    float current = t->current + delta / 100 * 100;

    if (!t->progress)
        return;
    if (current > 100)
        current = 100;
    t->current = current;
    if (current > t->last_print + 2.0f || current < t->last_print - 2.0f ||
        current == 100 || current == 0) {
        t->last_print = current;
        append(t, line, snprintf(line, sizeof(line), "    (%3.2f/100%%)\r",
                                 (double)current));
    }
}

static int is_zero(const uint8_t *p, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++)
        if (p[i])
            return 0;
    return 1;
}

/* qemu's find_nonzero(): the first non-zero 512-byte sector. */
static int64_t find_nonzero(const uint8_t *buf, uint64_t n)
{
    uint64_t i, end = n / SECTOR * SECTOR;

    for (i = 0; i < end; i += SECTOR)
        if (!is_zero(buf + i, SECTOR))
            return (int64_t)i;
    if (i < n && !is_zero(buf + i, n - end))
        return (int64_t)i;
    return -1;
}

/* qemu's compare_buffers() with 512-byte chunks: whether the first chunk
 * differs, and how far that answer holds. */
static int compare_buffers(const uint8_t *a, const uint8_t *b, uint64_t bytes,
                           uint64_t *pnum)
{
    uint64_t i = bytes < SECTOR ? bytes : SECTOR;
    int res = memcmp(a, b, (size_t)i) != 0;

    while (i < bytes) {
        uint64_t len = bytes - i < SECTOR ? bytes - i : SECTOR;

        if ((memcmp(a + i, b + i, (size_t)len) != 0) != res)
            break;
        i += len;
    }
    *pnum = i;
    return res;
}

static int read_err(struct ins_ctx *ctx, int err, uint64_t offset,
                    const char *name)
{
    ins_error(ctx, err, "Error while reading offset %llu of %s: %s",
              (unsigned long long)offset, name, ins_strerror(err));
    return 4;
}

/* 0 when the range reads as zeros, 1 (with the message) if not, 4 on a
 * read error. */
static int check_empty(struct ins_image *img, uint64_t offset, uint64_t bytes,
                       const char *name, uint8_t *buf, struct text *out)
{
    int rc = ins_image_read(img, buf, (size_t)bytes, offset);
    int64_t idx;

    if (rc < 0)
        return read_err(img->ctx, rc, offset, name);
    idx = find_nonzero(buf, bytes);
    if (idx >= 0) {
        say(out, "Content mismatch at offset %llu!\n", offset + (uint64_t)idx);
        return 1;
    }
    return 0;
}

static int status_err(struct ins_ctx *ctx, const char *name)
{
    ins_error(ctx, INS_EIO, "Sector allocation test failed for %s", name);
    return 3;
}

static int compare_common(struct ins_ctx *ctx, struct ins_image *img1,
                          const char *name1, struct ins_image *img2,
                          const char *name2, int strict, uint8_t *buf1,
                          uint8_t *buf2, struct text *out)
{
    uint64_t size1 = img1->virtual_size, size2 = img2->virtual_size;
    uint64_t total = size1 < size2 ? size1 : size2;
    uint64_t longest = size1 > size2 ? size1 : size2;
    uint64_t offset = 0, chunk;
    int ret;

    progress(out, 0);
    if (strict && size1 != size2) {
        say(out, "Strict mode: Image size mismatch!\n", 0);
        return 1;
    }
    while (offset < total) {
        struct ins_bstat st1, st2;
        int s1 = ins_status_above(img1, offset, size1 - offset, &st1, NULL);
        int s2, a1, a2;

        if (s1 < 0)
            return status_err(ctx, name1);
        s2 = ins_status_above(img2, offset, size2 - offset, &st2, NULL);
        if (s2 < 0)
            return status_err(ctx, name2);
        if (st1.pnum == 0 || st2.pnum == 0)
            return status_err(ctx, st1.pnum ? name2 : name1);
        a1 = (s1 & INS_BS_ALLOCATED) != 0;
        a2 = (s2 & INS_BS_ALLOCATED) != 0;
        chunk = st1.pnum < st2.pnum ? st1.pnum : st2.pnum;

        if (strict && s1 != s2) {
            say(out, "Strict mode: Offset %llu block status mismatch!\n", offset);
            return 1;
        }
        if ((s1 & INS_BS_ZERO) && (s2 & INS_BS_ZERO)) {
            /* both read as zeros */
        } else if (a1 == a2) {
            if (a1) {
                uint64_t pnum;

                if (chunk > IO_BUF_SIZE)
                    chunk = IO_BUF_SIZE;
                ret = ins_image_read(img1, buf1, (size_t)chunk, offset);
                if (ret < 0)
                    return read_err(ctx, ret, offset, name1);
                ret = ins_image_read(img2, buf2, (size_t)chunk, offset);
                if (ret < 0)
                    return read_err(ctx, ret, offset, name2);
                ret = compare_buffers(buf1, buf2, chunk, &pnum);
                if (ret || pnum != chunk) {
                    say(out, "Content mismatch at offset %llu!\n",
                        offset + (ret ? 0 : pnum));
                    return 1;
                }
            }
        } else {
            if (chunk > IO_BUF_SIZE)
                chunk = IO_BUF_SIZE;
            ret = a1 ? check_empty(img1, offset, chunk, name1, buf1, out)
                     : check_empty(img2, offset, chunk, name2, buf1, out);
            if (ret)
                return ret;
        }
        offset += chunk;
        progress(out, ((float)chunk / (float)longest) * 100);
    }

    if (size1 != size2) {
        struct ins_image *over = size1 > size2 ? img1 : img2;
        const char *over_name = size1 > size2 ? name1 : name2;

        say(out, "Warning: Image size mismatch!\n", 0);
        while (offset < longest) {
            struct ins_bstat st;
            int s = ins_status_above(over, offset, longest - offset, &st, NULL);

            if (s < 0 || st.pnum == 0)
                return status_err(ctx, over_name);
            chunk = st.pnum;
            if ((s & INS_BS_ALLOCATED) && !(s & INS_BS_ZERO)) {
                if (chunk > IO_BUF_SIZE)
                    chunk = IO_BUF_SIZE;
                ret = check_empty(over, offset, chunk, over_name, buf1, out);
                if (ret)
                    return ret;
            }
            offset += chunk;
            progress(out, ((float)chunk / (float)longest) * 100);
        }
    }
    say(out, "Images are identical.\n", 0);
    return 0;
}

int ins_op_compare(struct ins_ctx *ctx, struct ins_image *img1,
                   const char *name1, struct ins_image *img2,
                   const char *name2, int strict, int show_progress,
                   char **out_text)
{
    struct text out = { ctx, NULL, 0, 0, show_progress, 0, 0 };
    uint8_t *buf1 = ins_malloc(ctx, IO_BUF_SIZE);
    uint8_t *buf2 = ins_malloc(ctx, IO_BUF_SIZE);
    int ret;

    *out_text = NULL;
    if (!buf1 || !buf2) {
        ins_free(ctx, buf1);
        ins_free(ctx, buf2);
        return ins_error(ctx, INS_ENOMEM, "Out of memory");
    }
    ret = compare_common(ctx, img1, name1, img2, name2, strict, buf1, buf2, &out);
    if (show_progress)
        append(&out, "\n", 1);     /* qemu_progress_end() */
    ins_free(ctx, buf1);
    ins_free(ctx, buf2);
    if (out.failed) {
        ins_free(ctx, out.buf);
        return ins_error(ctx, INS_ENOMEM, "Out of memory");
    }
    *out_text = out.buf;
    return ret;
}

/*
 * parallels_check.c - qemu-img check for Parallels images.
 *
 * qemu's parallels_co_check changed between 7.2 and 10.0; with
 * --unsafe-quirks we follow the version instar stands in for:
 *
 *   7.2   an unclean header ("inuse" magic), BAT entries starting past the
 *         end of the file (still counted as allocated), space after the
 *         last cluster (leaks, in clusters), statistics;
 *   10.0  the same unclean test; the header's data_off; entries whose
 *         cluster does not end inside the file (not counted); leaks after
 *         the image end; two entries naming one cluster; statistics.
 *
 * qemu 10.0 aborts (an assertion) when an entry lies beyond the image end
 * it computed or before the data area; we cannot mirror a crash, so such
 * an entry simply takes no part in the duplicate test there.
 *
 * The safe default is 10.0's check, whatever the version, plus entries
 * pointing into the header and BAT.  Repair (-r) is not implemented: it
 * answers "not supported" (qemu repairs: it rewrites the header, clears
 * bad entries, truncates leaks and in 10.0 moves duplicate clusters).
 * The BAT is streamed, once per pass; the duplicate test keeps a bit per
 * cluster of the data area (capped).
 */
#include "fmt_check.h"

#include <string.h>

#define PRL_HEADER_SIZE     64
#define PRL_MAGIC_V1        "WithoutFreeSpace"
#define PRL_INUSE_MAGIC     0x746F6E59u
#define PRL_OFF_INUSE       44
#define PRL_OFF_DATA_OFF    48
#define CHUNK               65536u
#define MAX_BITMAP_BITS     ((uint64_t)1 << 31)

struct prl_check {
    struct ins_image *img;
    struct ins_ctx *ctx;
    struct ins_check_result *res;
    struct prl_layout l;
    uint8_t hdr[PRL_HEADER_SIZE];
    int safe;
    uint64_t size;              /* the file's length, whole sectors */
    uint64_t cluster;           /* bytes */
    uint64_t data_start;        /* sectors */
    uint64_t data_end;          /* sectors */
    uint8_t *chunk;
    struct ins_check_log log;   /* stderr lines, batched */
};

/* Calls fn for every BAT entry, in order, with its byte offset. */
static int each_entry(struct prl_check *c,
                      void (*fn)(struct prl_check *, uint32_t, uint64_t, void *),
                      void *arg)
{
    uint64_t bytes = (uint64_t)c->l.bat_size * 4, done;

    for (done = 0; done < bytes; done += CHUNK) {
        size_t n = bytes - done < CHUNK ? (size_t)(bytes - done) : CHUNK, j;
        int rc = ins_read_zfill(c->img->file, c->chunk, n, PRL_HEADER_SIZE + done);

        if (rc < 0)
            return ins_error(c->ctx, rc, "Could not read the Parallels BAT");
        for (j = 0; j + 4 <= n; j += 4) {
            uint64_t sect = (uint64_t)ins_le32(c->chunk + j) * c->l.off_multiplier;

            fn(c, (uint32_t)((done + j) / 4), sect << 9, arg);
        }
    }
    return INS_OK;
}

static void check_unclean(struct prl_check *c)
{
    if (ins_le32(c->hdr + PRL_OFF_INUSE) != PRL_INUSE_MAGIC)
        return;
    ins_check_logf(&c->log, "ERROR image was not closed correctly");
    c->res->corruptions++;
}

static void check_leak(struct prl_check *c)
{
    uint64_t end = (uint64_t)c->res->image_end_offset;

    if (c->size <= end)
        return;
    ins_check_logf(&c->log, "ERROR space leaked at the end of the image %lld",
                   (long long)(c->size - end));
    c->res->leaks += (int64_t)((c->size - end + c->cluster - 1) / c->cluster);
}

/* ---- qemu 7.2 ---- */

struct walk72 {
    uint64_t high, prev;
};

static void entry72(struct prl_check *c, uint32_t i, uint64_t off, void *arg)
{
    struct walk72 *w = arg;

    if (off == 0) {
        w->prev = 0;
        return;
    }
    if (off > c->size) {
        ins_check_logf(&c->log, "ERROR cluster %u is outside image", i);
        c->res->corruptions++;
    }
    c->res->allocated_clusters++;
    if (off > w->high)
        w->high = off;
    if (w->prev != 0 && w->prev + c->cluster != off)
        c->res->fragmented_clusters++;
    w->prev = off;
}

static int check72(struct prl_check *c)
{
    struct walk72 w = { 0, 0 };
    int rc;

    check_unclean(c);
    c->res->total_clusters = c->l.bat_size;
    if ((rc = each_entry(c, entry72, &w)) < 0)
        return rc;
    c->res->image_end_offset = (int64_t)(w.high + c->cluster);
    check_leak(c);
    return INS_OK;
}

/* ---- qemu 10.0 ---- */

/* parallels_test_data_off: whether data_off is right; data_start gets the
 * offset qemu uses either way. */
static int data_off_ok(struct prl_check *c)
{
    int old_magic = memcmp(c->hdr, PRL_MAGIC_V1, 16) == 0;
    uint64_t min_off = (PRL_HEADER_SIZE + 4 * (uint64_t)c->l.bat_size + 511) / 512;
    uint32_t data_off = ins_le32(c->hdr + PRL_OFF_DATA_OFF);

    if (!old_magic)
        min_off = (min_off + c->l.tracks - 1) / c->l.tracks * c->l.tracks;
    c->data_start = min_off;
    if (data_off == 0 && old_magic)
        return 1;
    if (data_off < min_off || data_off > c->size / 512)
        return 0;
    c->data_start = data_off;
    return 1;
}

static void entry_data_end(struct prl_check *c, uint32_t i, uint64_t off, void *arg)
{
    uint64_t sect = off >> 9;

    (void)i;
    (void)arg;
    if (sect + c->l.tracks > c->data_end)
        c->data_end = sect + c->l.tracks;
}

static void entry_outside(struct prl_check *c, uint32_t i, uint64_t off, void *arg)
{
    uint64_t *high = arg;

    if (off + c->cluster > c->size) {
        ins_check_logf(&c->log, "ERROR cluster %u is outside image", i);
        c->res->corruptions++;
        return;
    }
    if (c->safe && off != 0 && off < c->data_start * 512) {
        ins_check_logf(&c->log, "ERROR cluster %u overlaps the header or the "
                       "BAT", i);
        c->res->corruptions++;
        return;
    }
    if (off > *high)
        *high = off;
}

struct dup_walk {
    uint8_t *bits;
    uint64_t nbits;
    int last_busy;              /* qemu's ret: the last entry's outcome */
};

static void entry_dup(struct prl_check *c, uint32_t i, uint64_t off, void *arg)
{
    struct dup_walk *d = arg;
    uint64_t start = c->data_start * 512, idx;

    if (off == 0 || off < start)
        return;         /* qemu 10.0 aborts on the latter */
    idx = (off - start) / c->cluster;
    if (idx + 1 > d->nbits)
        return;         /* and on this */
    d->last_busy = ins_bitset_test_set(d->bits, idx);
    if (d->last_busy) {
        ins_check_logf(&c->log, "ERROR duplicate offset in BAT entry %u", i);
        c->res->corruptions++;
    }
}

static int check_duplicates(struct prl_check *c)
{
    uint64_t end = (uint64_t)c->res->image_end_offset, start = c->data_start * 512;
    struct dup_walk d;
    int rc;

    if (end <= start)
        return INS_OK;
    /* qemu keeps the count in 32 bits. */
    d.nbits = (uint32_t)((end - start) / c->cluster);
    if (d.nbits == 0)
        return INS_OK;
    if (end % c->cluster)
        d.nbits = (uint32_t)(d.nbits + 1);
    if (d.nbits > MAX_BITMAP_BITS)
        return ins_error(c->ctx, INS_EFBIG, "Parallels image too large to "
                         "check for duplicate clusters");
    d.bits = ins_bitset_new(c->ctx, d.nbits);
    if (!d.bits)
        return ins_error(c->ctx, INS_ENOMEM, "Out of memory");
    d.last_busy = 0;
    rc = each_entry(c, entry_dup, &d);
    ins_free(c->ctx, d.bits);
    /* qemu 10.0 returns what marking the last entry returned: when that
     * was a duplicate, the check fails with EBUSY ("Check failed: Device
     * or resource busy"). */
    if (rc == INS_OK && d.last_busy && !c->safe)
        rc = ins_error(c->ctx, INS_EBUSY, "Device or resource busy");
    return rc;
}

static void entry_stats(struct prl_check *c, uint32_t i, uint64_t off, void *arg)
{
    uint64_t *prev = arg;

    (void)i;
    if (off == 0 || off + c->cluster > (uint64_t)c->res->image_end_offset) {
        *prev = 0;
        return;
    }
    if (*prev != 0 && *prev + c->cluster != off)
        c->res->fragmented_clusters++;
    *prev = off;
    c->res->allocated_clusters++;
}

static int check100(struct prl_check *c)
{
    uint64_t high = 0, prev = 0;
    int ok, rc;

    check_unclean(c);
    ok = data_off_ok(c);
    if (!ok) {
        c->res->corruptions++;
        ins_check_logf(&c->log, "ERROR data_off field has incorrect value");
    }
    /* parallels_open's data_end: the data area's start, or past the last
     * cluster any entry (even an empty one) reaches. */
    c->data_end = c->data_start;
    if ((rc = each_entry(c, entry_data_end, NULL)) < 0 ||
        (rc = each_entry(c, entry_outside, &high)) < 0)
        return rc;
    c->res->image_end_offset = (int64_t)(high == 0 ? c->data_end << 9
                                                   : high + c->cluster);
    check_leak(c);
    if ((rc = check_duplicates(c)) < 0)
        return rc;
    c->res->total_clusters = c->l.bat_size;
    return each_entry(c, entry_stats, &prev);
}

int ins_prl_check(struct ins_image *img, unsigned fix,
                  struct ins_check_result *res)
{
    struct ins_ctx *ctx = img->ctx;
    struct prl_check c;
    unsigned v = INS_QEMU_VERSION(ctx);
    int rc;

    if (fix)
        return ins_error(ctx, INS_ENOTSUP, "instar cannot repair parallels "
                         "images");
    memset(&c, 0, sizeof(c));
    c.img = img;
    c.ctx = ctx;
    c.res = res;
    c.safe = !ins_check_unsafe(img);
    ins_prl_layout(img, &c.l);
    c.cluster = (uint64_t)c.l.tracks * 512;
    c.size = (img->file->size + 511) & ~(uint64_t)511;
    if ((rc = ins_read_zfill(img->file, c.hdr, sizeof(c.hdr), 0)) < 0)
        return ins_error(ctx, rc, "Could not read the Parallels header");
    c.chunk = ins_malloc(ctx, CHUNK);
    if (!c.chunk)
        return ins_error(ctx, INS_ENOMEM, "Out of memory");
    ins_check_log_init(&c.log, ctx);
    if (!c.safe && v != 0 && v < 1000)
        rc = check72(&c);
    else
        rc = check100(&c);
    ins_check_log_free(&c.log);
    ins_free(ctx, c.chunk);
    return rc;
}

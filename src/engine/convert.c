/*
 * convert.c - qemu-img convert's copy loop as a parallel pipeline.
 *
 * qemu-img copies in "iterations": runs of one block status (data, zero,
 * or left to the target's backing file), data runs cut to 2 MiB, every
 * cluster on its own when compressing.  Without -W it writes them in
 * order, which fixes where a format like qcow2 places each cluster.  We
 * plan the same iterations in the same order on the calling thread, let
 * reader threads read, zero-detect and compress them (each thread through
 * its own handle on the source images: drivers keep caches and are not
 * thread-safe), and write the results in order from the calling thread,
 * which also reads whenever it would otherwise wait.  At most `nslots`
 * chunks are in flight, which bounds memory.
 */
#include "convert.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>

#define SECTOR 512u
#define BUF_SECTORS 4096u                   /* qemu-img's IO_BUF_SIZE, 2 MiB */
#define REQUEST_MAX_SECTORS (0x7fffffffu >> 9)
#define MAX_THREADS 16
#define PAGE 4096u

enum blk { BLK_DATA, BLK_ZERO, BLK_BACKING };

/* One piece of a chunk's write plan. */
struct piece {
    uint64_t off, len;          /* guest bytes */
    int data;                   /* 1: write data, 0: zeros */
    size_t clen;                /* compressed: bytes in cbuf, 0 = uncompressed */
};

enum slot_state { SLOT_FREE, SLOT_TODO, SLOT_BUSY, SLOT_DONE };

struct slot {
    enum slot_state state;
    uint64_t off, len;          /* guest bytes */
    enum blk status;
    int zeros_as_data;          /* -S 0: a zero run, written as data */
    uint8_t *buf;               /* len bytes of guest data (DATA), page-aligned */
    const uint8_t *data;        /* the chunk's guest data: buf, or a view */
    const void *view;           /* a source file's bytes seen in place, or NULL */
    uint64_t view_off;          /* where in that file */
    void (*unview)(const void *addr, size_t len, uint64_t offset);
    uint8_t *buf_mem;           /* the allocation buf lies in */
    size_t buf_cap;
    uint8_t *cbuf;              /* compressed clusters, cstride apart */
    size_t cbuf_cap;
    struct piece *pieces;
    size_t npieces, pieces_cap;
    struct ins_wdefer defer;    /* its data writes, with shared writes */
    int rc;
    char errmsg[sizeof(((struct ins_ctx *)0)->errmsg)];
    int errmsg_plain;
    char *warnings;             /* --salvage: newline-separated */
    size_t warnings_len;
};

struct source {
    struct ins_image *img;      /* the caller's handle (planner, main reader) */
    uint64_t sectors;
    uint64_t alignment;         /* sectors (qemu's src_alignment) */
};

struct pipe;

struct reader {
    struct pipe *p;
    struct ins_ctx ctx;         /* own errmsg */
    struct ins_image **imgs;    /* this thread's handles, one per source */
    struct ins_bdev **files;    /* their own copies of the layers' files */
    size_t n_files, cap_files;
    pthread_t tid;
    int started;
};

struct pipe {
    struct ins_ctx *ctx;
    const struct ins_convert_opts *o;
    struct ins_wimage *w;
    struct source *src;
    size_t nsrc;
    uint64_t total_sectors;
    /* Data runs go from file to file in the kernel (copy_file_range), not
     * through the readers' buffers: raw to raw with -C or -S 0, where
     * qemu-img does not look for zeros in data either.  Cleared (by any
     * thread) once a copy fails: the rest is read and written. */
    int copy;
    /* A raw target has no metadata and takes writes anywhere, from any
     * thread: the readers write their chunks themselves, in parallel and
     * while the data is still in their core's cache. */
    int direct;
    uint64_t cluster_sectors;   /* target granularity in sectors */
    /* Compressing: room for one compressed cluster, and the most it may
     * take.  Less than a cluster where an incompressible one is written
     * as it is (qcow2); a whole deflate bound where every one must be
     * compressed (vmdk streamOptimized), so none is compressed twice. */
    uint64_t cstride, ccap;
    uint64_t alignment;         /* qemu's s.alignment, sectors */

    /* Planner state: qemu's sector_num / sector_next_status / status. */
    uint64_t plan_sector;
    uint64_t next_status;
    enum blk status;

    /* Progress (qemu_progress_print with a 1% step). */
    uint64_t allocated_sectors, allocated_done;
    float cur, last_print;

    /* The ring of chunks in flight. */
    pthread_mutex_t mu;
    pthread_cond_t cv_work, cv_done;
    struct slot *slots;
    size_t nslots;
    uint64_t seq_planned, seq_taken, seq_written;
    int quit;
    /*
     * Shared writes (a writer with can_defer, new target, no --salvage):
     * whoever finishes the chunk next in guest order takes the writer
     * role (writing) just long enough for the writer to place it (its
     * metadata, in order), then writes the chunk's data itself, in
     * parallel with the next placement.  The thread that read a chunk
     * mostly writes it, while its mappings and cache lines are warm.
     * seq_freed counts chunks done with; write_rc stops everyone after a
     * failure; deferred_end is the end of the data written so (the
     * file's size is updated once, at the end).  Of several failures the
     * one at the lowest guest offset is reported (qemu-img, writing in
     * order, meets that one first): fail_guest, fail_msg.
     */
    int shared, writing, write_rc, fail_plain;
    uint64_t seq_freed, deferred_end, fail_guest;
    char fail_msg[sizeof(((struct ins_ctx *)0)->errmsg)];

    /* One granule being assembled for the writer (partial writes). */
    uint8_t *stage;
    uint64_t stage_off;
    int staged;
    uint8_t *covered;           /* one byte per sector of the stage */

    struct reader readers[MAX_THREADS];
    int nreaders;
};

/* ---- zero detection ---- */

int ins_buffer_is_zero(const void *p, size_t len)
{
    const uint8_t *b = p;
    size_t i = 0;

    /* Word at a time in blocks of 64 bytes: the compiler vectorises the
     * OR-reduction; bail out at the first non-zero block. */
    for (; i + 64 <= len; i += 64) {
        uint64_t w[8], acc = 0;

        memcpy(w, b + i, 64);
        for (int k = 0; k < 8; k++)
            acc |= w[k];
        if (acc)
            return 0;
    }
    for (; i < len; i++)
        if (b[i])
            return 0;
    return 1;
}

/* qemu-img's is_allocated_sectors(): the run of sectors sharing the first
 * one's zeroness, its end aligned where that avoids read-modify-write. */
static int alloc_run(const uint8_t *buf, uint64_t n, uint64_t *pnum,
                     uint64_t sector, uint64_t alignment)
{
    uint64_t i, tail;
    int zero;

    if (n == 0) {
        *pnum = 0;
        return 0;
    }
    zero = ins_buffer_is_zero(buf, SECTOR);
    for (i = 1; i < n; i++)
        if (zero != ins_buffer_is_zero(buf + i * SECTOR, SECTOR))
            break;
    if (i == n) {
        *pnum = i;
        return !zero;
    }
    tail = (sector + i) & (alignment - 1);
    if (tail) {
        if (zero && i <= tail)
            zero = 0;
        if (!zero) {
            i += alignment - tail;
            if (i > n)
                i = n;
        } else {
            i -= tail;
        }
    }
    *pnum = i;
    return !zero;
}

/* qemu-img's is_allocated_sectors_min(): data runs swallow zero runs
 * shorter than min sectors. */
static int alloc_run_min(const uint8_t *buf, uint64_t n, uint64_t *pnum,
                         uint64_t min, uint64_t sector, uint64_t alignment)
{
    uint64_t used, checked;
    int ret;

    if (n < min)
        min = n;
    ret = alloc_run(buf, n, pnum, sector, alignment);
    if (!ret)
        return ret;
    used = checked = *pnum;
    buf += *pnum * SECTOR;
    n -= *pnum;
    sector += *pnum;
    while (n > 0) {
        ret = alloc_run(buf, n, pnum, sector, alignment);
        buf += *pnum * SECTOR;
        n -= *pnum;
        sector += *pnum;
        checked += *pnum;
        if (ret)
            used = checked;
        else if (*pnum >= min)
            break;
    }
    *pnum = used;
    return 1;
}

static int emit_warning(struct pipe *p, const char *text);

/* ---- planning: qemu-img's convert_iteration_sectors() ---- */

static size_t select_source(const struct pipe *p, uint64_t sector,
                            uint64_t *src_off)
{
    size_t i = 0;

    *src_off = 0;
    while (i + 1 < p->nsrc && sector - *src_off >= p->src[i].sectors) {
        *src_off += p->src[i].sectors;
        i++;
    }
    return i;
}

/* The next iteration at `sector`: its length in sectors (p->status says
 * what it is), or a negative INS_E*. */
static int64_t iteration(struct pipe *p, uint64_t sector)
{
    const struct ins_convert_opts *o = p->o;
    uint64_t src_off, n;
    size_t cur = select_source(p, sector, &src_off);
    int post_backing_zero = 0;

    n = p->total_sectors - sector;
    if (n > REQUEST_MAX_SECTORS)
        n = REQUEST_MAX_SECTORS;
    if (o->target_backing_sectors >= 0) {
        uint64_t tbs = (uint64_t)o->target_backing_sectors;

        if (sector >= tbs)
            post_backing_zero = 1;
        else if (sector + n > tbs)
            n = tbs - sector;
    }

    if (p->next_status <= sector) {
        struct ins_image *img = p->src[cur].img;
        uint64_t offset = (sector - src_off) * SECTOR, count, tail;
        struct ins_bstat st;
        int ret;

        for (;;) {
            count = n * SECTOR;
            /* -B: only the source's top layer counts when it has a
             * backing file (qemu's base = the source's backing). */
            if (o->target_has_backing && img->backing)
                ret = ins_node_status(img, offset, count, &st);
            else
                ret = ins_status_above(img, offset, count, &st, NULL);
            if (ret >= 0) {
                count = st.pnum;
                break;
            }
            if (!o->salvage)
                return ins_error_plain(p->ctx, ret, "error while reading block "
                                       "status at offset %llu: %s",
                                       (unsigned long long)offset,
                                       ins_strerror(ret));
            if (n == 1) {
                if (!o->quiet) {
                    char line[128];

                    snprintf(line, sizeof(line), "error while reading block "
                             "status at offset %llu: %s",
                             (unsigned long long)offset, ins_strerror(ret));
                    emit_warning(p, line);
                }
                ret = INS_BS_DATA;
                count = SECTOR;
                break;
            }
            n = (n + 3) / 4;
        }
        if (count == 0) {
            /* Past the end of this source (cannot happen for a sane
             * driver): treat one sector as data. */
            count = SECTOR;
            ret = INS_BS_DATA;
        }
        n = (count + SECTOR - 1) / SECTOR;
        tail = (sector - src_off + n) % p->src[cur].alignment;
        if (n > tail)
            n -= tail;
        if (ret & INS_BS_ZERO)
            p->status = post_backing_zero ? BLK_BACKING : BLK_ZERO;
        else if (ret & INS_BS_DATA)
            p->status = BLK_DATA;
        else
            p->status = o->target_has_backing ? BLK_BACKING : BLK_DATA;
        p->next_status = sector + n;
    }

    if (n > p->next_status - sector)
        n = p->next_status - sector;
    if (p->status == BLK_DATA && n > BUF_SECTORS && !o->compressed)
        n = BUF_SECTORS;
    if (o->compressed) {
        uint64_t cs = p->cluster_sectors;

        if (p->status == BLK_DATA && n > cs)
            n = cs;     /* buf_sectors is one cluster when compressing */
        if (n < cs) {
            n = cs < p->total_sectors - sector ? cs : p->total_sectors - sector;
            p->status = BLK_DATA;
        } else {
            n = n / cs * cs;
        }
    }
    return (int64_t)n;
}

/* ---- progress ---- */

static void emit_progress(struct pipe *p, float current)
{
    struct tree_builder tb;
    struct tree *d;
    uint32_t bits;

    if (!p->o->progress || !p->ctx->emit)
        return;
    if (current > 100)
        current = 100;
    p->cur = current;
    if (!(current > p->last_print + 1.0f || current < p->last_print - 1.0f ||
          current == 100 || current == 0))
        return;
    p->last_print = current;
    memcpy(&bits, &current, sizeof(bits));
    tree_builder_init(&tb, p->ctx->alloc);
    d = tree_new_dict(&tb);
    tree_put_uint(&tb, d, "progress", bits);
    if (!tb.failed)
        p->ctx->emit(p->ctx, d);
    tree_free(p->ctx->alloc, d);
}

static int emit_warning(struct pipe *p, const char *text)
{
    struct tree_builder tb;
    struct tree *d;
    int rc = INS_OK;

    if (!p->ctx->emit)
        return INS_OK;
    tree_builder_init(&tb, p->ctx->alloc);
    d = tree_new_dict(&tb);
    tree_put_str(&tb, d, "warning", text);
    if (!tb.failed)
        rc = p->ctx->emit(p->ctx, d);
    tree_free(p->ctx->alloc, d);
    return rc;
}

/* ---- processing a chunk (any thread) ---- */

static int add_piece(struct ins_ctx *ctx, struct slot *s, uint64_t off,
                     uint64_t len, int data, size_t clen)
{
    if (s->npieces == s->pieces_cap) {
        size_t cap = s->pieces_cap ? s->pieces_cap * 2 : 16;
        struct piece *np = ins_realloc(ctx, s->pieces, cap * sizeof(*np));

        if (!np)
            return ins_error(ctx, INS_ENOMEM, "Out of memory");
        s->pieces = np;
        s->pieces_cap = cap;
    }
    s->pieces[s->npieces++] = (struct piece){ off, len, data, clen };
    return INS_OK;
}

static void add_warning(struct ins_ctx *ctx, struct slot *s, const char *text)
{
    size_t tl = strlen(text);
    char *nw = ins_realloc(ctx, s->warnings, s->warnings_len + tl + 2);

    if (!nw)
        return;
    memcpy(nw + s->warnings_len, text, tl);
    nw[s->warnings_len + tl] = '\n';
    nw[s->warnings_len + tl + 1] = '\0';
    s->warnings = nw;
    s->warnings_len += tl + 1;
}

/* qemu-img's convert_co_read(): guest bytes of the concatenated sources,
 * sector by sector after a failure with --salvage. */
static int read_chunk(struct pipe *p, struct ins_ctx *ctx,
                      struct ins_image **imgs, struct slot *s)
{
    uint64_t sector = s->off / SECTOR;
    uint64_t single_until = 0;
    uint8_t *buf = s->buf;
    uint64_t guest = s->off, left = s->len;

    while (left > 0) {
        uint64_t src_off, n, offset;
        size_t cur = select_source(p, sector, &src_off);
        struct ins_image *img = imgs[cur];
        uint64_t avail;
        int rc;

        offset = guest - src_off * SECTOR;
        avail = img->virtual_size > offset ? img->virtual_size - offset : 0;
        n = left < avail ? left : avail;
        if (n == 0) {
            /* Past this source's end inside its last sector: zeros. */
            n = left < SECTOR ? left : SECTOR;
            memset(buf, 0, n);
            goto next;
        }
        if (single_until > offset && n > SECTOR)
            n = SECTOR;
        rc = ins_image_read(img, buf, n, offset);
        if (rc < 0) {
            char line[256];

            if (!p->o->salvage)
                return rc;
            if (n > SECTOR) {
                single_until = offset + n;
                continue;
            }
            if (!p->o->quiet) {
                snprintf(line, sizeof(line), "error while reading offset %llu: %s",
                         (unsigned long long)offset, ins_strerror(rc));
                add_warning(ctx, s, line);
            }
            memset(buf, 0, n);
        }
next:
        buf += n;
        guest += n;
        left -= n;
        sector = guest / SECTOR;
    }
    return INS_OK;
}

/* qemu-img's convert_co_write() decisions for a data chunk. */
static int plan_writes(struct pipe *p, struct ins_ctx *ctx, struct slot *s)
{
    const struct ins_convert_opts *o = p->o;
    uint64_t sector = s->off / SECTOR;
    uint64_t nsec = (s->len + SECTOR - 1) / SECTOR;
    const uint8_t *buf = s->data;
    int rc;

    if (o->compressed) {
        uint64_t cs = p->cluster_sectors * SECTOR, off;

        for (off = 0; off < s->len; off += cs) {
            size_t len = s->len - off < cs ? (size_t)(s->len - off) : (size_t)cs;
            size_t clen = 0;

            if (o->min_sparse && ins_buffer_is_zero(buf + off, len)) {
                rc = add_piece(ctx, s, s->off + off, len, 0, 0);
            } else {
                uint8_t *in = (uint8_t *)buf + off;
                uint8_t *out = s->cbuf + off / cs * p->cstride;

                if (len < cs) {
                    /* The image's last cluster, zero-padded (the buffer
                     * has room): qcow2 compresses it whole, vmdk only
                     * the guest bytes (see writer.h). */
                    memset(in + len, 0, cs - len);
                }
                if (p->w->wr->compress(p->w, in, len, out, (size_t)p->ccap,
                                       &clen) < 0)
                    clen = 0;
                rc = add_piece(ctx, s, s->off + off, len, 1, clen);
            }
            if (rc < 0)
                return rc;
        }
        return INS_OK;
    }

    while (nsec > 0) {
        uint64_t n = nsec, off = sector * SECTOR, len;
        int data = 1;

        if (o->min_sparse)
            data = alloc_run_min(buf, n, &n, o->min_sparse, sector, p->alignment);
        len = n * SECTOR;
        if (off + len > s->off + s->len)
            len = s->off + s->len - off;
        rc = add_piece(ctx, s, off, len, data, 0);
        if (rc < 0)
            return rc;
        buf += n * SECTOR;
        sector += n;
        nsec -= n;
    }
    return INS_OK;
}

static int ensure_buffers(struct pipe *p, struct ins_ctx *ctx, struct slot *s)
{
    /* Room for the zero-padded last cluster when compressing. */
    size_t need = (size_t)s->len + (p->o->compressed ? p->cluster_sectors * SECTOR
                                                      : SECTOR);

    if (s->buf_cap < need) {
        /* Page-aligned: the kernel copies from an unaligned buffer into
         * the page cache several times slower. */
        ins_free(ctx, s->buf_mem);
        s->buf_mem = ins_malloc(ctx, need + PAGE);
        s->buf_cap = s->buf_mem ? need : 0;
        if (!s->buf_mem)
            return ins_error(ctx, INS_ENOMEM, "Out of memory");
        s->buf = s->buf_mem + (PAGE - (uintptr_t)s->buf_mem % PAGE) % PAGE;
    }
    need = (size_t)((s->len / (p->cluster_sectors * SECTOR) + 1) * p->cstride);
    if (p->o->compressed && s->cbuf_cap < need) {
        ins_free(ctx, s->cbuf);
        s->cbuf = ins_malloc(ctx, need);
        s->cbuf_cap = s->cbuf ? need : 0;
        if (!s->cbuf)
            return ins_error(ctx, INS_ENOMEM, "Out of memory");
    }
    return INS_OK;
}

/*
 * Copies a data chunk from the raw sources' files straight into the raw
 * target's file at the same guest offsets.  Returns 0 when done, 1 when
 * this chunk must be read instead (a source ends inside it and the target
 * may hold data there), or INS_E* when copying does not work here.
 */
static int copy_chunk(struct pipe *p, struct ins_image **imgs,
                      const struct slot *s)
{
    uint64_t guest = s->off, left = s->len;

    while (left > 0) {
        uint64_t src_off, offset, avail, n;
        size_t cur = select_source(p, guest / SECTOR, &src_off);
        struct ins_bdev *f = imgs[cur]->file;

        offset = guest - src_off * SECTOR;
        avail = imgs[cur]->virtual_size > offset ? imgs[cur]->virtual_size - offset : 0;
        n = left < avail ? left : avail;
        if (n == 0) {
            /* Past this source's end inside its last sector. */
            if (!p->o->has_zero_init)
                return 1;
            n = left < SECTOR ? left : SECTOR;
        }
        for (uint64_t done = 0; avail && done < n;) {
            size_t want = n - done > (1u << 30) ? 1u << 30 : (size_t)(n - done);
            int64_t got = f->copy(f->opaque, p->w->out, offset + done,
                                  guest + done, want);

            if (got < 0)
                return (int)got;
            if (got == 0)
                return INS_EIO;     /* the file is shorter than the image */
            done += (uint64_t)got;
        }
        guest += n;
        left -= n;
    }
    return INS_OK;
}

/*
 * Looks at a data chunk in place when its source stores all of it as plain
 * bytes in one file (ins_image_locate), saving the copy into a buffer: the
 * zero scan and the write read the page cache directly.  Returns 1 when
 * s->data points into a view, 2 when the whole chunk reads as zeros
 * (a format whose block status calls everything data), 0 to read the
 * chunk (also on any error, which the read then reports).
 */
static int view_chunk(struct pipe *p, struct ins_image **imgs, struct slot *s)
{
    uint64_t src_off, offset, map = 0, pnum;
    size_t cur = select_source(p, s->off / SECTOR, &src_off);
    struct ins_image *img = imgs[cur];
    struct ins_bdev *f = NULL;
    const void *v;
    int rc;

    offset = s->off - src_off * SECTOR;
    if (offset > img->virtual_size || s->len > img->virtual_size - offset)
        return 0;
    rc = ins_image_locate(img, offset, s->len, &f, &map, &pnum);
    if (rc == 2 && pnum >= s->len)
        return 2;
    if (rc != 1 || pnum < s->len || !f->view || !f->unview ||
        f->view(f->opaque, map, (size_t)s->len, &v) < 0)
        return 0;
    s->view = v;
    s->view_off = map;
    s->unview = f->unview;
    s->data = v;
    return 1;
}

static void release_view(struct slot *s)
{
    if (s->view) {
        s->unview(s->view, (size_t)s->len, s->view_off);
        s->view = NULL;
        s->data = NULL;
    }
}

/* The chunk's pieces into a raw target, on the reader's thread (see
 * struct pipe's direct); nothing is left for the writer thread. */
static int write_direct(struct pipe *p, struct slot *s)
{
    struct ins_wimage *w = p->w;
    size_t i;
    int rc = INS_OK;

    for (i = 0; i < s->npieces && rc == 0; i++) {
        const struct piece *pc = &s->pieces[i];

        if (pc->data)
            rc = w->wr->write(w, s->data + (pc->off - s->off), (size_t)pc->len,
                              pc->off);
        else if (!p->o->has_zero_init)
            rc = w->wr->write_zeroes(w, pc->off, pc->len);
        if (rc < 0)
            snprintf(s->errmsg, sizeof(s->errmsg), "error while writing at "
                     "byte %lld: %s", (long long)pc->off, ins_strerror(rc));
    }
    s->errmsg_plain = rc < 0;
    s->npieces = 0;
    return rc;
}

static void process(struct pipe *p, struct ins_ctx *ctx,
                    struct ins_image **imgs, struct slot *s)
{
    int rc = INS_OK, seen = 0;

    s->npieces = 0;
    s->warnings_len = 0;
    ctx->errmsg[0] = '\0';
    ctx->errmsg_plain = 0;
    if (s->status == BLK_DATA && !s->zeros_as_data &&
        __atomic_load_n(&p->copy, __ATOMIC_RELAXED)) {
        /* Any failure: read and write this chunk and the rest, as qemu
         * retries without copy offloading. */
        rc = copy_chunk(p, imgs, s);
        if (rc == 0) {
            s->rc = 0;
            return;
        }
        if (rc < 0)
            __atomic_store_n(&p->copy, 0, __ATOMIC_RELAXED);
        rc = INS_OK;
    }
    if (s->status == BLK_DATA && !p->o->compressed && !s->zeros_as_data &&
        !p->o->salvage)
        seen = view_chunk(p, imgs, s);
    if (seen == 1) {
        rc = plan_writes(p, ctx, s);
    } else if (seen == 2 && p->o->min_sparse) {
        /* What the zero scan makes of a chunk of zeros (alloc_run_min). */
        rc = add_piece(ctx, s, s->off, s->len, 0, 0);
    } else if (s->status == BLK_DATA) {
        rc = ensure_buffers(p, ctx, s);
        s->data = s->buf;
        if (rc == 0) {
            rc = read_chunk(p, ctx, imgs, s);
            if (rc < 0) {
                snprintf(s->errmsg, sizeof(s->errmsg),
                         "error while reading at byte %lld: %s",
                         (long long)s->off, ins_strerror(rc));
                s->errmsg_plain = 1;
            }
        }
        if (rc == 0)
            rc = plan_writes(p, ctx, s);
    } else if (s->status == BLK_ZERO) {
        rc = add_piece(ctx, s, s->off, s->len, 0, 0);
    }
    if (rc == 0 && p->direct)
        rc = write_direct(p, s);
    if (p->direct)
        release_view(s);
    if (rc < 0 && !s->errmsg[0]) {
        snprintf(s->errmsg, sizeof(s->errmsg), "%s",
                 ctx->errmsg[0] ? ctx->errmsg : ins_strerror(rc));
        s->errmsg_plain = 1;
    }
    s->rc = rc;
}

/* Takes the oldest chunk nobody works on; called with the lock held. */
static struct slot *take(struct pipe *p)
{
    while (p->seq_taken < p->seq_planned) {
        struct slot *s = &p->slots[p->seq_taken++ % p->nslots];

        if (s->state == SLOT_TODO) {
            s->state = SLOT_BUSY;
            return s;
        }
    }
    return NULL;
}

static int write_slot(struct pipe *p, struct slot *s);

/* Records a shared-write failure at guest offset guest if it is the
 * first or lies before the one recorded; called with mu held. */
static void note_failure(struct pipe *p, int rc, uint64_t guest,
                         const char *msg, int plain)
{
    if (p->write_rc == 0 || guest < p->fail_guest) {
        p->write_rc = rc;
        p->fail_guest = guest;
        snprintf(p->fail_msg, sizeof(p->fail_msg), "%s", msg);
        p->fail_plain = plain;
    }
}

/*
 * Shared writes: places the done chunks next in guest order (the writer
 * role, one thread at a time) and writes their data.  Called and returns
 * with mu held.
 */
static void drain(struct pipe *p)
{
    while (!p->writing && p->write_rc == 0 && p->seq_written < p->seq_planned) {
        struct slot *s = &p->slots[p->seq_written % p->nslots];
        uint64_t end = 0;
        size_t failed = 0;
        int rc, data_rc = 0;

        if (s->state != SLOT_DONE)
            break;
        p->writing = 1;
        pthread_mutex_unlock(&p->mu);
        s->defer.n = 0;
        p->w->defer = &s->defer;
        rc = write_slot(p, s);
        p->w->defer = NULL;
        pthread_mutex_lock(&p->mu);
        p->writing = 0;
        p->seq_written++;
        if (rc < 0)                 /* write_slot's message is in p->ctx */
            note_failure(p, rc, s->off, p->ctx->errmsg, p->ctx->errmsg_plain);
        pthread_cond_broadcast(&p->cv_done);
        pthread_mutex_unlock(&p->mu);
        if (rc == 0)
            data_rc = ins_wdefer_run(p->w, &s->defer, &end, &failed);
        release_view(s);
        if (data_rc < 0) {
            uint64_t guest = s->defer.items[failed].guest;
            char msg[sizeof(p->fail_msg)];

            snprintf(msg, sizeof(msg), "error while writing at byte %lld: %s",
                     (long long)guest, ins_strerror(data_rc));
            pthread_mutex_lock(&p->mu);
            note_failure(p, data_rc, guest, msg, 1);
        } else {
            pthread_mutex_lock(&p->mu);
        }
        if (end > p->deferred_end)
            p->deferred_end = end;
        s->state = SLOT_FREE;
        p->seq_freed++;
        pthread_cond_broadcast(&p->cv_done);
    }
}

static void *reader_main(void *arg)
{
    struct reader *r = arg;
    struct pipe *p = r->p;

    pthread_mutex_lock(&p->mu);
    for (;;) {
        struct slot *s;

        while (!p->quit && p->seq_taken >= p->seq_planned)
            pthread_cond_wait(&p->cv_work, &p->mu);
        if (p->quit)
            break;
        s = take(p);
        if (!s)
            continue;
        pthread_mutex_unlock(&p->mu);
        process(p, &r->ctx, r->imgs, s);
        pthread_mutex_lock(&p->mu);
        s->state = SLOT_DONE;
        if (p->shared)
            drain(p);
        pthread_cond_broadcast(&p->cv_done);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

/* ---- writing, in order (calling thread) ---- */

/* Guest bytes of the target's backing file (zeros past its end). */
static int read_target_backing(struct pipe *p, uint8_t *buf, uint64_t len,
                               uint64_t off)
{
    struct ins_image *b = p->o->target_backing;
    uint64_t n;

    memset(buf, 0, len);
    if (!b)
        return ins_error_plain(p->ctx, INS_ENOTSUP, "cannot copy part of a "
                               "cluster from the backing file: it could not "
                               "be opened");
    if (off >= b->virtual_size)
        return INS_OK;
    n = b->virtual_size - off < len ? b->virtual_size - off : len;
    return ins_image_read(b, buf, (size_t)n, off);
}

/*
 * Writes the staged granule.  Sectors nothing was staged for read as
 * zeros in a new image without a backing file; over a backing file they
 * are copied from it, as qemu's copy-on-write fills a partly written
 * cluster.
 */
static int stage_flush(struct pipe *p)
{
    struct ins_wimage *w = p->w;
    uint64_t len = w->granularity, i, n;
    int rc = INS_OK;

    if (!p->staged)
        return INS_OK;
    if (p->stage_off + len > w->virtual_size)
        len = w->virtual_size - p->stage_off;
    p->staged = 0;
    if (p->o->target_has_backing) {
        for (i = 0; i * SECTOR < len && rc == 0; i += n) {
            uint64_t off = p->stage_off + i * SECTOR, bytes;

            for (n = 0; (i + n) * SECTOR < len && !p->covered[i + n]; n++)
                ;
            if (n == 0) {
                n = 1;
                continue;
            }
            bytes = n * SECTOR;
            if (off + bytes > p->stage_off + len)
                bytes = p->stage_off + len - off;
            rc = read_target_backing(p, p->stage + i * SECTOR, bytes, off);
        }
    }
    if (rc == 0) {
        /* The stage is reused at once: never a deferred write. */
        struct ins_wdefer *d = w->defer;

        w->defer = NULL;
        rc = w->wr->write(w, p->stage, (size_t)len, p->stage_off);
        w->defer = d;
    }
    memset(p->stage, 0, w->granularity);
    memset(p->covered, 0, w->granularity / SECTOR + 1);
    return rc;
}

/* Data for guest [off, off + len): whole granules go straight to the
 * writer, partial ones through the stage. */
static int put_data(struct pipe *p, const uint8_t *buf, uint64_t off,
                    uint64_t len)
{
    struct ins_wimage *w = p->w;
    uint64_t g = w->granularity;
    int rc;

    while (len > 0) {
        uint64_t gstart = off / g * g, n;

        if (p->staged && p->stage_off != gstart) {
            rc = stage_flush(p);
            if (rc < 0)
                return rc;
        }
        if (off == gstart && !p->staged &&
            (len >= g || off + len >= w->virtual_size)) {
            n = len / g * g;
            if (n == 0)
                n = len;        /* the image's last, short granule */
            rc = w->wr->write(w, buf, (size_t)n, off);
            if (rc < 0)
                return rc;
        } else {
            n = gstart + g - off;
            if (n > len)
                n = len;
            memcpy(p->stage + (off - gstart), buf, (size_t)n);
            memset(p->covered + (off - gstart) / SECTOR, 1,
                   (size_t)((off - gstart + n + SECTOR - 1) / SECTOR -
                            (off - gstart) / SECTOR));
            p->stage_off = gstart;
            p->staged = 1;
            if (off + n == gstart + g || off + n >= w->virtual_size) {
                rc = stage_flush(p);
                if (rc < 0)
                    return rc;
            }
        }
        buf += n;
        off += n;
        len -= n;
    }
    return INS_OK;
}

static int put_zeroes(struct pipe *p, uint64_t off, uint64_t len)
{
    static const uint8_t zeros[4096];
    struct ins_wimage *w = p->w;
    uint64_t g = w->granularity;
    int rc;

    while (len > 0) {
        uint64_t gstart = off / g * g, n;

        if (p->staged && p->stage_off != gstart) {
            rc = stage_flush(p);
            if (rc < 0)
                return rc;
        }
        n = off == gstart && len >= g ? len / g * g : gstart + g - off;
        if (n > len)
            n = len;
        /* Whole granules, or a partial one nobody wrote yet: the writer
         * may record zeros (qemu's write_zeroes); INS_ENOTSUP means
         * write them out. */
        rc = INS_ENOTSUP;
        if (w->wr->write_zeroes && !p->staged)
            rc = w->wr->write_zeroes(w, off, n);
        if (rc == INS_ENOTSUP) {
            uint64_t done = 0;

            rc = INS_OK;
            while (rc == 0 && done < n) {
                uint64_t k = n - done < sizeof(zeros) ? n - done : sizeof(zeros);

                rc = put_data(p, zeros, off + done, k);
                done += k;
            }
        }
        if (rc < 0)
            return rc;
        off += n;
        len -= n;
    }
    return INS_OK;
}

static int write_slot(struct pipe *p, struct slot *s)
{
    const struct ins_convert_opts *o = p->o;
    struct ins_wimage *w = p->w;
    size_t i;
    int rc;

    if (s->warnings_len) {
        char *line = s->warnings, *nl;

        while ((nl = strchr(line, '\n')) != NULL) {
            *nl = '\0';
            emit_warning(p, line);
            line = nl + 1;
        }
    }
    if (s->rc < 0) {
        snprintf(p->ctx->errmsg, sizeof(p->ctx->errmsg), "%s", s->errmsg);
        p->ctx->errmsg_plain = s->errmsg_plain;
        return s->rc;
    }
    for (i = 0; i < s->npieces; i++) {
        const struct piece *pc = &s->pieces[i];
        const uint8_t *data = s->data ? s->data + (pc->off - s->off) : NULL;

        if (!pc->data) {
            if (o->has_zero_init)
                continue;
            rc = put_zeroes(p, pc->off, pc->len);
        } else if (o->compressed && pc->clen) {
            rc = w->wr->write_compressed(w, s->cbuf + (pc->off - s->off) /
                                         (p->cluster_sectors * SECTOR) * p->cstride,
                                         pc->clen, pc->off);
        } else {
            if (w->defer)
                w->defer->guest = pc->off;
            rc = put_data(p, data, pc->off, pc->len);
        }
        if (rc < 0) {
            char inner[sizeof(p->ctx->errmsg)];

            snprintf(inner, sizeof(inner), "%s", ins_strerror(rc));
            return ins_error_plain(p->ctx, rc, "error while writing at byte "
                                   "%lld: %s", (long long)pc->off, inner);
        }
    }
    return INS_OK;
}

/* ---- setup ---- */

/* qemu-img's src_alignment: the larger of the request alignment (one
 * sector here) and the cluster size bdrv_get_info() reports. */
static uint64_t source_alignment(struct ins_ctx *ctx, struct ins_image *img)
{
    struct tree_builder tb;
    struct ins_info *info = ins_calloc(ctx, 1, sizeof(*info));
    uint64_t align = 1;
    size_t i;

    if (!info)
        return 1;
    tree_builder_init(&tb, ctx->alloc);
    if (img->drv->info(img, &tb, info) == INS_OK && info->has_cluster_size &&
        info->cluster_size >= (int64_t)SECTOR && info->cluster_size <= (1 << 30))
        align = (uint64_t)info->cluster_size / SECTOR;
    if (info->format_specific)
        tree_free(ctx->alloc, info->format_specific);
    for (i = 0; i < info->n_snapshots && info->snapshots; i++) {
        ins_free(ctx, info->snapshots[i].id);
        ins_free(ctx, info->snapshots[i].name);
    }
    ins_free(ctx, info->snapshots);
    ins_free(ctx, info->backing_filename);
    ins_free(ctx, info->backing_format);
    for (i = 0; i < info->n_children; i++)
        ins_free(ctx, info->children[i].name);
    ins_free(ctx, info);
    return align;
}

/* A second handle on a source's whole chain over the same files, for a
 * reader thread.  Each layer gets its own copy of its file's block device
 * (the descriptor is shared, pread is thread-safe; the block-status cache
 * in the struct is not). */
static int clone_chain(struct ins_ctx *ctx, struct ins_image *img,
                       struct reader *r, struct ins_image **out)
{
    struct ins_image *top = NULL, *prev = NULL, *l, *c;
    int rc;

    for (l = img; l; l = l->backing) {
        struct ins_bdev *bd;

        if (r->n_files == r->cap_files) {
            size_t cap = r->cap_files ? r->cap_files * 2 : 8;
            struct ins_bdev **nf = ins_realloc(ctx, r->files, cap * sizeof(*nf));

            if (!nf) {
                ins_image_close(top);
                return INS_ENOMEM;
            }
            r->files = nf;
            r->cap_files = cap;
        }
        bd = ins_malloc(ctx, sizeof(*bd));
        if (!bd) {
            ins_image_close(top);
            return INS_ENOMEM;
        }
        *bd = *l->file;
        bd->bsc_start = bd->bsc_end = 0;
        r->files[r->n_files++] = bd;
        rc = l->drv->open(ctx, bd, INS_O_READ, &c);
        if (rc < 0) {
            ins_image_close(top);
            return rc;
        }
        c->ctx = &r->ctx;
        if (prev)
            prev->backing = c;
        else
            top = c;
        prev = c;
    }
    *out = top;
    return INS_OK;
}

static void free_reader(struct pipe *p, struct reader *r)
{
    size_t k;

    for (k = 0; r->imgs && k < p->nsrc; k++)
        ins_image_close(r->imgs[k]);
    ins_free(p->ctx, r->imgs);
    for (k = 0; k < r->n_files; k++)
        ins_free(p->ctx, r->files[k]);
    ins_free(p->ctx, r->files);
    r->imgs = NULL;
    r->files = NULL;
    r->n_files = r->cap_files = 0;
}

static void start_readers(struct pipe *p, int want)
{
    int i;
    size_t k;

    for (i = 0; i < want && i < MAX_THREADS; i++) {
        struct reader *r = &p->readers[i];
        int ok = 1;

        r->p = p;
        r->ctx = *p->ctx;
        r->ctx.errmsg[0] = '\0';
        r->ctx.open_ref = NULL;
        r->ctx.emit = NULL;
        r->imgs = ins_calloc(p->ctx, p->nsrc, sizeof(*r->imgs));
        if (!r->imgs)
            break;
        for (k = 0; k < p->nsrc && ok; k++)
            ok = clone_chain(p->ctx, p->src[k].img, r, &r->imgs[k]) == 0;
        /* -l: the same snapshot view of the first source. */
        if (ok && (p->o->sn_id || p->o->sn_name))
            ok = ins_image_load_snapshot(r->imgs[0], p->o->sn_id,
                                         p->o->sn_name) == 0;
        else if (ok && p->o->sn_id_or_name)
            ok = ins_image_load_snapshot_by_id_or_name(r->imgs[0],
                                                       p->o->sn_id_or_name) == 0;
        if (!ok || pthread_create(&r->tid, NULL, reader_main, r) != 0) {
            free_reader(p, r);
            p->ctx->errmsg[0] = '\0';
            break;
        }
        r->started = 1;
        p->nreaders++;
    }
}

static void stop_readers(struct pipe *p)
{
    int i;

    pthread_mutex_lock(&p->mu);
    p->quit = 1;
    pthread_cond_broadcast(&p->cv_work);
    pthread_mutex_unlock(&p->mu);
    for (i = 0; i < p->nreaders; i++) {
        struct reader *r = &p->readers[i];

        pthread_join(r->tid, NULL);
        free_reader(p, r);
    }
}

/* qemu-img's first pass: how many sectors will be copied (for -p). */
static int count_allocated(struct pipe *p)
{
    uint64_t sector = 0;

    p->next_status = 0;
    while (sector < p->total_sectors) {
        int64_t n = iteration(p, sector);

        if (n < 0)
            return (int)n;
        if (p->status == BLK_DATA || (!p->o->min_sparse && p->status == BLK_ZERO))
            p->allocated_sectors += (uint64_t)n;
        sector += (uint64_t)n;
    }
    p->next_status = 0;
    return INS_OK;
}

/* Plans the next chunk into a free slot (coalescing a compressed image's
 * cluster iterations).  Returns 1 when one was planned, 0 at the end. */
static int plan_one(struct pipe *p, struct slot *s)
{
    uint64_t limit = p->o->compressed ? BUF_SECTORS : ~0ull;
    int64_t n;

    if (p->plan_sector >= p->total_sectors)
        return 0;
    n = iteration(p, p->plan_sector);
    if (n < 0)
        return (int)n;
    s->off = p->plan_sector * SECTOR;
    s->status = p->status;
    s->zeros_as_data = 0;
    s->len = (uint64_t)n * SECTOR;
    if (!p->o->min_sparse && s->status == BLK_ZERO) {
        if (n > BUF_SECTORS)
            n = BUF_SECTORS;
        s->len = (uint64_t)n * SECTOR;
        s->status = BLK_DATA;   /* -S 0: zeros are written as data */
        s->zeros_as_data = 1;
    }
    p->plan_sector += (uint64_t)n;
    if (s->status == BLK_DATA || (!p->o->min_sparse && p->status == BLK_ZERO)) {
        p->allocated_done += (uint64_t)n;
        if (p->allocated_sectors)
            emit_progress(p, 100.0f * (float)p->allocated_done /
                          (float)p->allocated_sectors);
    }
    /* Compressed: gather this status run's further clusters. */
    while (p->o->compressed && s->status == BLK_DATA &&
           s->len / SECTOR < limit && p->plan_sector < p->total_sectors &&
           p->next_status > p->plan_sector && p->status == BLK_DATA) {
        n = iteration(p, p->plan_sector);
        if (n < 0)
            return (int)n;
        if (p->status != BLK_DATA)
            break;
        s->len += (uint64_t)n * SECTOR;
        p->plan_sector += (uint64_t)n;
        p->allocated_done += (uint64_t)n;
        if (p->allocated_sectors)
            emit_progress(p, 100.0f * (float)p->allocated_done /
                          (float)p->allocated_sectors);
    }
    /* The image's end need not be sector-aligned. */
    if (s->off + s->len > p->w->virtual_size && p->w->virtual_size > s->off)
        s->len = p->w->virtual_size - s->off;
    return 1;
}

/* Hands a planned chunk to the readers (data) or marks it done (zeros,
 * the backing file's); called with mu held. */
static int queue_planned(struct pipe *p, struct slot *s)
{
    int rc = INS_OK;

    s->state = s->status == BLK_DATA ? SLOT_TODO : SLOT_DONE;
    if (s->state == SLOT_DONE) {
        s->npieces = 0;
        s->warnings_len = 0;
        if (s->status == BLK_ZERO)
            rc = add_piece(p->ctx, s, s->off, s->len, 0, 0);
    }
    p->seq_planned++;
    pthread_cond_signal(&p->cv_work);
    return rc;
}

static int run(struct pipe *p)
{
    int planning = 1, rc = INS_OK;

    for (;;) {
        struct slot *s;

        /* Plan ahead while there is room. */
        while (planning && p->seq_planned - p->seq_written < p->nslots) {
            s = &p->slots[p->seq_planned % p->nslots];
            s->rc = 0;
            s->errmsg[0] = '\0';
            rc = plan_one(p, s);
            if (rc < 0)
                return rc;
            if (rc == 0) {
                planning = 0;
                break;
            }
            pthread_mutex_lock(&p->mu);
            rc = queue_planned(p, s);
            pthread_mutex_unlock(&p->mu);
            if (rc < 0)
                return rc;
            rc = INS_OK;
        }
        if (p->seq_written == p->seq_planned)
            break;

        /* Write the oldest chunk, helping with the reading meanwhile. */
        s = &p->slots[p->seq_written % p->nslots];
        pthread_mutex_lock(&p->mu);
        while (s->state != SLOT_DONE) {
            struct slot *mine = take(p);

            if (mine) {
                struct ins_image *imgs[64];
                size_t k;

                for (k = 0; k < p->nsrc && k < 64; k++)
                    imgs[k] = p->src[k].img;
                pthread_mutex_unlock(&p->mu);
                process(p, p->ctx, imgs, mine);
                pthread_mutex_lock(&p->mu);
                mine->state = SLOT_DONE;
                continue;
            }
            pthread_cond_wait(&p->cv_done, &p->mu);
        }
        pthread_mutex_unlock(&p->mu);
        rc = write_slot(p, s);
        release_view(s);
        if (rc < 0)
            return rc;
        s->state = SLOT_FREE;
        p->seq_written++;
    }
    return stage_flush(p);
}

/* Stops the shared writers after the calling thread failed: nobody takes
 * the writer role again, and whoever has it finishes.  The calling
 * thread's message stands (a writer failing meanwhile writes its own into
 * the same context). */
static int stop_writing(struct pipe *p, int rc)
{
    char msg[sizeof(p->ctx->errmsg)];
    int plain = p->ctx->errmsg_plain;

    memcpy(msg, p->ctx->errmsg, sizeof(msg));
    pthread_mutex_lock(&p->mu);
    if (p->write_rc == 0)
        p->write_rc = rc;
    while (p->writing)
        pthread_cond_wait(&p->cv_done, &p->mu);
    pthread_mutex_unlock(&p->mu);
    memcpy(p->ctx->errmsg, msg, sizeof(msg));
    p->ctx->errmsg_plain = plain;
    return rc;
}

/* run() with shared writes: the calling thread plans, and places and
 * writes chunks (zero runs mostly) when their turn comes. */
static int run_shared(struct pipe *p)
{
    int planning = 1, rc;

    pthread_mutex_lock(&p->mu);
    for (;;) {
        struct slot *s = &p->slots[p->seq_planned % p->nslots];

        if (p->write_rc) {
            /* Every chunk placed writes its data first: one of them may
             * fail at a lower offset. */
            while (p->writing || p->seq_freed < p->seq_written)
                pthread_cond_wait(&p->cv_done, &p->mu);
            rc = p->write_rc;
            memcpy(p->ctx->errmsg, p->fail_msg, sizeof(p->fail_msg));
            p->ctx->errmsg_plain = p->fail_plain;
            pthread_mutex_unlock(&p->mu);
            return rc;
        }
        drain(p);
        if (!planning && p->seq_freed == p->seq_planned)
            break;
        if (!planning || s->state != SLOT_FREE) {
            pthread_cond_wait(&p->cv_done, &p->mu);
            continue;
        }
        pthread_mutex_unlock(&p->mu);
        s->rc = 0;
        s->errmsg[0] = '\0';
        rc = plan_one(p, s);
        if (rc < 0)
            return stop_writing(p, rc);
        pthread_mutex_lock(&p->mu);
        if (rc == 0) {
            planning = 0;
            continue;
        }
        rc = queue_planned(p, s);
        if (rc < 0) {
            pthread_mutex_unlock(&p->mu);
            return stop_writing(p, rc);
        }
    }
    pthread_mutex_unlock(&p->mu);
    if (p->deferred_end > p->w->out->size)
        p->w->out->size = p->deferred_end;
    return stage_flush(p);
}

/* Raw files into a raw file, where the zeros inside data runs need not
 * be found (-C, -S 0): the kernel can copy (see struct pipe's copy). */
static int copy_possible(const struct ins_convert_src *src, size_t nsrc,
                         const struct ins_wimage *w,
                         const struct ins_convert_opts *o)
{
    if (!(o->copy_range || !o->min_sparse) || o->compressed ||
        o->target_has_backing || w->wr != &ins_wr_raw || !ins_writable(w->out))
        return 0;
    for (size_t i = 0; i < nsrc; i++) {
        const struct ins_image *img = src[i].img;

        if (img->drv != &ins_drv_raw || img->backing || !img->file ||
            !img->file->copy)
            return 0;
    }
    return 1;
}

int ins_op_convert(struct ins_ctx *ctx, const struct ins_convert_src *src,
                   size_t nsrc, struct ins_wimage *w,
                   const struct ins_convert_opts *opts)
{
    struct ins_convert_opts lo = *opts;
    struct pipe p;
    size_t i;
    int rc, threads = opts->threads;

    if (nsrc == 0 || nsrc > 64)
        return ins_error(ctx, INS_EINVAL, "bad number of sources");
    /* qemu-img: s.compressed |= bdi.needs_compressed_writes. */
    if (w->needs_compressed_writes)
        lo.compressed = 1;
    opts = &lo;
    if (opts->compressed && (!w->wr->compress || !w->wr->write_compressed))
        return ins_error_plain(ctx, INS_ENOTSUP,
                               "Compression not supported for this file format");
    memset(&p, 0, sizeof(p));
    p.ctx = ctx;
    p.o = opts;
    p.w = w;
    p.nsrc = nsrc;
    p.src = ins_calloc(ctx, nsrc, sizeof(*p.src));
    if (!p.src)
        return ins_error(ctx, INS_ENOMEM, "Out of memory");
    for (i = 0; i < nsrc; i++) {
        uint64_t sectors = (src[i].img->virtual_size + SECTOR - 1) / SECTOR;

        p.src[i].img = src[i].img;
        p.src[i].sectors = sectors;
        p.src[i].alignment = source_alignment(ctx, src[i].img);
        p.total_sectors += sectors;
    }
    p.cluster_sectors = (w->cluster_size ? w->cluster_size : w->granularity) / SECTOR;
    if (!p.cluster_sectors)
        p.cluster_sectors = 1;
    if (opts->compressed && p.cluster_sectors > BUF_SECTORS * 8) {
        ins_free(ctx, p.src);
        return ins_error_plain(ctx, INS_EINVAL, "invalid cluster size");
    }
    p.copy = copy_possible(src, nsrc, w, opts);
    p.direct = w->wr == &ins_wr_raw && !opts->compressed &&
               !opts->target_has_backing;
    p.cstride = p.cluster_sectors * SECTOR;
    p.ccap = p.cstride - 1;
    if (w->needs_compressed_writes) {
        p.cstride += p.cstride / 8 + 1024;      /* > zlib's compressBound() */
        p.ccap = p.cstride;
    }
    /* qemu's s.alignment = MAX(pow2floor(min_sparse), 1). */
    p.alignment = 1;
    while (p.alignment * 2 <= opts->min_sparse)
        p.alignment *= 2;

    if (threads < 0)
        threads = 0;
    if (threads > MAX_THREADS)
        threads = MAX_THREADS;
    /* Three chunks per thread in flight, within 128 MiB of buffers. */
    {
        uint64_t chunk = BUF_SECTORS * SECTOR + p.cluster_sectors * SECTOR;
        uint64_t per = opts->compressed ? 2 * chunk : chunk;
        uint64_t cap = (128ull << 20) / per;

        p.nslots = (size_t)(threads + 1) * 3;
        if (p.nslots > cap)
            p.nslots = (size_t)cap;
        if (p.nslots < 2)
            p.nslots = 2;
    }
    p.slots = ins_calloc(ctx, p.nslots, sizeof(*p.slots));
    p.stage = ins_calloc(ctx, 1, w->granularity ? (size_t)w->granularity : SECTOR);
    p.covered = ins_calloc(ctx, 1, (size_t)(w->granularity / SECTOR + 1));
    if (!p.slots || !p.stage || !p.covered) {
        ins_free(ctx, p.covered);
        ins_free(ctx, p.slots);
        ins_free(ctx, p.stage);
        ins_free(ctx, p.src);
        return ins_error(ctx, INS_ENOMEM, "Out of memory");
    }
    pthread_mutex_init(&p.mu, NULL);
    pthread_cond_init(&p.cv_work, NULL);
    pthread_cond_init(&p.cv_done, NULL);

    rc = INS_OK;
    /* The host prints the meter's first (0) and last (100) values. */
    if (opts->progress)
        rc = count_allocated(&p);
    if (rc == 0) {
        start_readers(&p, threads);
        /* Only into a fresh image: metadata may then reach the file
         * before the data it points at, as nothing else reads it yet. */
        p.shared = p.nreaders > 0 && w->wr->can_defer && w->zero_init &&
                   opts->has_zero_init && !opts->salvage &&
                   !opts->compressed && !opts->target_has_backing;
        rc = p.shared ? run_shared(&p) : run(&p);
        stop_readers(&p);
    }
    for (i = 0; i < p.nslots; i++) {
        release_view(&p.slots[i]);
        ins_free(ctx, p.slots[i].buf_mem);
        ins_free(ctx, p.slots[i].cbuf);
        ins_free(ctx, p.slots[i].pieces);
        ins_free(ctx, p.slots[i].defer.items);
        ins_free(ctx, p.slots[i].warnings);
    }
    pthread_cond_destroy(&p.cv_done);
    pthread_cond_destroy(&p.cv_work);
    pthread_mutex_destroy(&p.mu);
    ins_free(ctx, p.slots);
    ins_free(ctx, p.stage);
    ins_free(ctx, p.covered);
    ins_free(ctx, p.src);
    return rc;
}

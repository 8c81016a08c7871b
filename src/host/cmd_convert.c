/*
 * cmd_convert.c - `convert`: qemu-img convert's options, checks and
 * messages, with the copy done in a sandboxed worker.
 *
 * The host opens the sources read-only, checks the target format and
 * its -o options (createopts.c) and creates the target: a temporary file
 * next to OUT (and any extra files the format needs), which the worker
 * fills through its descriptor and the host renames over OUT only when
 * the worker says the image is complete.  A failed or killed convert
 * leaves OUT as it was.  -n and non-regular targets (block devices) are
 * written in place, as qemu-img writes them.
 *
 * qemu-img checks in this order, and so do we: command line, open the
 * sources, load the snapshot, target format and options, backing file
 * rules, compression rules, create the target, copy.  Target errors are
 * found in the host first but printed after the worker has opened the
 * sources, so a bad source is reported first as qemu-img reports it.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <malloc.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "createopts.h"
#include "jobs.h"
#include "targets.h"
#include "../engine/convert.h"

#define MAX_SOURCES 32
#define MAX_EXTRA 1100

static const char convert_help[] =
    "Usage: %s convert [-f FMT] [-O FMT] [-o OPTIONS] [-c] [-p] [-q] [-n]\n"
    "                  [-S SIZE] [-m N] [-W] [-B BACKING [-F FMT]] [-l SNAPSHOT]\n"
    "                  [--target-is-zero] [-C] [--salvage] [-U]\n"
    "                  [--progress-fd=N] IN... OUT\n"
    "\n"
    "Convert (and concatenate) the images IN... into a new image OUT, as\n"
    "qemu-img convert does.  The sources are read in a sandboxed worker (on\n"
    "every core); backing files are opened only under the allowed directories.\n"
    "OUT appears only when it is complete: instar writes a temporary file next\n"
    "to it and renames it into place (-n and block devices are written in\n"
    "place).\n"
    "\n"
    "  -f FMT            format of the sources (default: detect)\n"
    "  -O FMT            target format (default raw): raw, qcow2, and the\n"
    "                    formats instar can write (see docs/convert.md)\n"
    "  -o OPTIONS        the target's creation options (key=value,...)\n"
    "  -c                compress the target (qcow2: compression_type zlib/zstd)\n"
    "  -S SIZE           smallest run of zeros left sparse (default 4k; 0 = none)\n"
    "  -B BACKING        make OUT an overlay of BACKING (needs -F FMT)\n"
    "  -l SNAPSHOT       convert an internal snapshot (id or name, or\n"
    "                    snapshot.id=ID,snapshot.name=NAME)\n"
    "  -n                write into the existing OUT (not created)\n"
    "  --target-is-zero  with -n: OUT reads as zeros already\n"
    "  --salvage         read errors become zeros (with a warning)\n"
    "  -p                show progress; -q: quiet\n"
    "  --progress-fd=N   progress as JSON lines on descriptor N\n"
    "  -m N, -W, -C, -t, -T, -r, -U   accepted for compatibility\n"
    "\n"
    "See 'instar info --help' for instar's own options.\n";

enum {
    OPT_OBJECT = 256, OPT_IMAGE_OPTS, OPT_TARGET_IMAGE_OPTS, OPT_SALVAGE,
    OPT_TARGET_IS_ZERO, OPT_BITMAPS, OPT_SKIP_BROKEN, OPT_PROGRESS_FD,
};

struct convert_args {
    const char *fmt, *out_fmt, *out_baseimg, *backing_fmt, *snapshot;
    const char *cache;          /* -t: the target's cache mode */
    const char *src_cache;      /* -T */
    char *options;
    int compressed, copy_range, progress, quiet, skip_create;
    int target_is_zero, salvage, bitmaps, skip_broken;
    int image_opts, tgt_image_opts;
    int explicit_min_sparse;
    uint64_t min_sparse;        /* sectors */
    int has_sn_opts;
    char *sn_id, *sn_name;
    int progress_fd;
    struct co_objects objs;
    const char *out_filename;
    char **srcs;
    int nsrc;
};

/* ---- the worker's part ---- */

struct convert_job {
    struct image_job src[MAX_SOURCES];
    size_t nsrc;
    const char *out_filename, *out_fmt;
    int skip_create;
    int size_only;              /* stop once the sources have opened: their size */
    int target_failed;          /* stop once the sources have opened */
    const struct tree *create_opts;
    const char *backing, *backing_fmt;
    const char *extra_names[MAX_EXTRA];
    size_t n_extra;
    struct ins_convert_opts copts;
    int flush;                  /* -t other than unsafe: flush the target */
    int has_sn_opts;
    const char *sn_id, *sn_name, *snapshot;
};

static int fail_plain(struct ins_ctx *ctx, int rc, const char *prefix)
{
    char msg[sizeof(ctx->errmsg)];

    snprintf(msg, sizeof(msg), "%s", ctx->errmsg[0] ? ctx->errmsg : ins_strerror(rc));
    ctx->errmsg_plain = 1;
    return ins_error_plain(ctx, rc, "%s%s", prefix, msg);
}

/*
 * Tells the host that the files asked for from now on belong to a new
 * chain: the next source's ("chain") or the target's ("target-backing"),
 * checked against the policy on their own.  Chains may share files (two
 * sources over one base, -B naming the source's own backing file); only
 * a file repeated within one chain is a loop.
 */
static int new_chain(struct ins_ctx *ctx, const char *key)
{
    struct tree_builder tb;
    struct tree *mark;
    int rc = INS_ENOMEM;

    tree_builder_init(&tb, ctx->alloc);
    mark = tree_new_dict(&tb);
    tree_put_bool(&tb, mark, key, 1);
    if (!tb.failed && ctx->emit)
        rc = ctx->emit(ctx, mark);
    tree_free(ctx->alloc, mark);
    return rc < 0 ? ins_error(ctx, INS_ENOMEM, "Out of memory") : INS_OK;
}

/* The target's backing file, opened as qemu opens it with the target:
 * for its length (qemu-img's target_backing_sectors) and for the parts of
 * partly written clusters.  NULL when it cannot be opened. */
static struct ins_image *open_target_backing(struct ins_ctx *ctx,
                                             const struct convert_job *job)
{
    struct ins_bdev *bd;
    const struct ins_driver *drv;
    struct ins_image *img;

    if (new_chain(ctx, "target-backing") < 0)
        return NULL;
    if (ctx->open_ref(ctx, INS_REF_BACKING, job->out_filename, job->backing, &bd) < 0)
        return NULL;
    if (ins_select_driver(ctx, bd, job->backing_fmt, 1, &drv) < 0 ||
        ins_image_open(ctx, bd, drv, 0, 1, &img) < 0)
        return NULL;
    return img;
}

static int convert_job_run(struct ins_ctx *ctx, void *opaque, const int *fds,
                           size_t nfds, struct tree_builder *tb,
                           struct tree **out)
{
    struct convert_job *job = opaque;
    struct ins_convert_src src[MAX_SOURCES];
    struct ins_image *img[MAX_SOURCES];
    struct ins_bdev *outbd, *extra[MAX_EXTRA];
    struct ins_wimage *w = NULL;
    const struct ins_writer *wr;
    struct ins_convert_opts copts = job->copts;
    uint64_t total = 0;
    size_t i;
    int rc;

    if (nfds < job->nsrc + (job->target_failed || job->size_only ? 0
                                                                 : 1 + job->n_extra))
        return ins_error(ctx, INS_EINVAL, "no image");
    /* One malloc arena: glibc shrinks a thread arena's heap only after
     * reading /proc/sys/vm/overcommit_memory, which the sandbox forbids. */
    mallopt(M_ARENA_MAX, 1);
    for (i = 0; i < job->nsrc; i++) {
        if (i > 0 && (rc = new_chain(ctx, "chain")) < 0)
            return rc;
        rc = job_open_image(ctx, &job->src[i], fds[i], &img[i]);
        if (rc < 0) {
            char msg[sizeof(ctx->errmsg)];

            /* Say which source failed: the host adds "Could not open". */
            snprintf(msg, sizeof(msg), "%s", ctx->errmsg);
            if (ctx->errmsg_plain)
                return ins_error_plain(ctx, rc, "%s", msg);
            return ins_error(ctx, rc, "%zu:%s", i, msg);
        }
        src[i].img = img[i];
        total += (img[i]->virtual_size + 511) / 512 * 512;
    }
    if (job->snapshot && !job->has_sn_opts && job->nsrc > 1)
        return ins_error_plain(ctx, INS_EINVAL,
                               "No support for concatenating multiple snapshot");
    if (job->has_sn_opts || job->snapshot) {
        if (job->has_sn_opts)
            rc = ins_image_load_snapshot(img[0], job->sn_id, job->sn_name);
        else
            rc = ins_image_load_snapshot_by_id_or_name(img[0], job->snapshot);
        if (rc < 0)
            return fail_plain(ctx, rc, "Failed to load snapshot: ");
        if (job->has_sn_opts) {
            copts.sn_id = job->sn_id;
            copts.sn_name = job->sn_name;
        } else {
            copts.sn_id_or_name = job->snapshot;
        }
    }
    if (job->size_only) {
        /* The first of two jobs: the host creates the files a target of
         * this size needs (vmdk extents), then runs the convert. */
        *out = tree_new_dict(tb);
        tree_put_uint(tb, *out, "size", total);
        return tb->failed ? ins_error(ctx, INS_ENOMEM, "Out of memory") : INS_OK;
    }
    if (job->target_failed) {
        *out = tree_new_dict(tb);
        tree_put_bool(tb, *out, "target-failed", 1);
        return tb->failed ? ins_error(ctx, INS_ENOMEM, "Out of memory") : INS_OK;
    }

    wr = ins_find_writer(job->out_fmt);
    outbd = ins_malloc(ctx, sizeof(*outbd));
    if (!wr || !outbd)
        return ins_error_plain(ctx, INS_ENOTSUP, "Unknown file format '%s'",
                               job->out_fmt);
    rc = worker_bdev_init(outbd, fds[job->nsrc], job->out_filename);
    if (rc < 0)
        return ins_error_plain(ctx, rc, "Could not open '%s': %s",
                               job->out_filename, ins_strerror(rc));
    /* qemu-img's default target cache mode is "unsafe": no flushes. */
    if (!job->flush)
        outbd->flush = NULL;
    if (job->skip_create) {
        if (!wr->open)
            return ins_error_plain(ctx, INS_ENOTSUP, "convert -n into %s images "
                                   "is not supported yet", job->out_fmt);
        rc = wr->open(ctx, outbd, &w);
        if (rc < 0)
            return fail_plain(ctx, rc, "");
        if (w->virtual_size < total) {
            wr->close(w);
            return ins_error_plain(ctx, INS_EINVAL,
                                   "output file is smaller than input file");
        }
    } else {
        struct ins_create cr;
        char prefix[4200];

        for (i = 0; i < job->n_extra; i++) {
            extra[i] = ins_malloc(ctx, sizeof(*extra[i]));
            if (!extra[i])
                return ins_error(ctx, INS_ENOMEM, "Out of memory");
            rc = worker_bdev_init(extra[i], fds[job->nsrc + 1 + i], job->extra_names[i]);
            if (rc < 0)
                return ins_error_plain(ctx, rc, "Could not open '%s'",
                                       job->extra_names[i]);
        }
        /* vmdk's create reads the backing file's CID. */
        if (job->backing && (rc = new_chain(ctx, "target-backing")) < 0)
            return rc;
        memset(&cr, 0, sizeof(cr));
        cr.size = total;
        cr.opts = job->create_opts;
        cr.backing_file = job->backing;
        cr.backing_format = job->backing_fmt;
        cr.extra = extra;
        cr.n_extra = job->n_extra;
        /* UUIDs, CIDs and timestamps of the new image (H6's writers). */
        if (getrandom(cr.random, sizeof(cr.random), 0) != (ssize_t)sizeof(cr.random))
            return ins_error_plain(ctx, INS_EIO, "getrandom failed");
        {
            struct timespec now;

            clock_gettime(CLOCK_REALTIME, &now);
            cr.now_unix = (uint64_t)now.tv_sec;
        }
        ctx->errmsg[0] = '\0';
        rc = wr->create(ctx, outbd, &cr, &w);
        if (rc < 0) {
            snprintf(prefix, sizeof(prefix), "%s: error while converting %s: ",
                     job->out_filename, job->out_fmt);
            return fail_plain(ctx, rc, prefix);
        }
        if (!copts.target_has_backing && copts.min_sparse)
            copts.has_zero_init = w->zero_init;
    }
    copts.target_backing_sectors = -1;
    if (copts.target_has_backing && !job->skip_create) {
        copts.target_backing = open_target_backing(ctx, job);
        if (copts.target_backing)
            copts.target_backing_sectors =
                (int64_t)((copts.target_backing->virtual_size + 511) / 512);
    }
    ctx->errmsg[0] = '\0';
    ctx->errmsg_plain = 0;

    rc = ins_op_convert(ctx, src, job->nsrc, w, &copts);
    if (rc == 0)
        rc = wr->finish(w);
    if (rc < 0) {
        if (!ctx->errmsg[0] || !ctx->errmsg_plain) {
            char msg[sizeof(ctx->errmsg)];

            snprintf(msg, sizeof(msg), "%s", ctx->errmsg[0] ? ctx->errmsg
                                                            : ins_strerror(rc));
            ins_error_plain(ctx, rc, "%s", msg);
        }
        wr->close(w);
        return rc;
    }
    wr->close(w);
    for (i = 0; i < job->nsrc; i++)
        ins_image_close(img[i]);
    *out = tree_new_dict(tb);
    tree_put_bool(tb, *out, "done", 1);
    return tb->failed ? ins_error(ctx, INS_ENOMEM, "Out of memory") : INS_OK;
}

/* ---- progress and warnings from the worker ---- */

struct convert_render {
    const struct options *o;
    int target_chain;           /* the worker opens the target's backing chain */
    unsigned chain;             /* chains begun so far (new_chain()) */
    int progress;               /* qemu's meter on stdout */
    int progress_fd;            /* JSON lines, or -1 */
    int quiet;
};

static void progress_json(const struct convert_render *r, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void progress_json(const struct convert_render *r, const char *fmt, ...)
{
    char line[256];
    va_list ap;
    int n;

    if (r->progress_fd < 0)
        return;
    va_start(ap, fmt);
    n = vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    if (n > 0 && (size_t)n < sizeof(line) && write(r->progress_fd, line, (size_t)n) < 0) {
        /* A closed progress descriptor does not stop the convert. */
    }
}

static void print_progress(const struct convert_render *r, float current)
{
    if (r->progress) {
        printf("    (%3.2f/100%%)\r", (double)current);
        fflush(stdout);
    }
    progress_json(r, "{\"progress\": %.2f}\n", (double)current);
}

static int convert_partial(void *opaque, const struct tree *part)
{
    struct convert_render *r = opaque;
    const struct tree *t;

    if (part->type != TREE_DICT)
        return -1;
    t = tree_get(part, "progress");
    if (t) {
        uint32_t bits;
        float f;

        if (t->type != TREE_UINT || t->v.u > UINT32_MAX)
            return -1;
        bits = (uint32_t)t->v.u;
        memcpy(&f, &bits, sizeof(f));
        if (!(f >= 0 && f <= 100))
            return -1;
        print_progress(r, f);
        return 0;
    }
    if (tree_get(part, "target-backing")) {
        r->target_chain = 1;
        r->chain++;
        return 0;
    }
    if (tree_get(part, "chain")) {
        r->chain++;
        return 0;
    }
    t = tree_get(part, "warning");
    if (t && t->type == TREE_STR) {
        if (!r->quiet) {
            fflush(stdout);
            fprintf(stderr, "%s: warning: %.900s\n", r->o->progname, t->v.str.s);
        }
        return 0;
    }
    return -1;
}

/* References: the sources' chains under one policy, the target's backing
 * chain under a second one (other allowed directories).  Each chain has
 * its own loop detection and depth. */
struct convert_refs {
    struct ref_state src, tgt;
    struct convert_render *r;
    unsigned chain;             /* the chain the states below belong to */
};

static int convert_ref_open(void *opaque, const struct worker_ref_request *req,
                            int *err, char *errbuf, size_t errlen)
{
    struct convert_refs *cr = opaque;
    struct ref_state *rs = cr->r->target_chain ? &cr->tgt : &cr->src;

    if (cr->chain != cr->r->chain) {
        cr->chain = cr->r->chain;
        policy_new_chain(rs->policy);
        rs->links = 0;
    }
    return host_ref_open(rs, req, err, errbuf, errlen);
}

/* host_run_job() with the two policies. */
static struct tree *run_job(struct options *o, struct policy *pol,
                            struct policy *tpol, void *job, const int *fds,
                            size_t nfds, struct convert_render *r,
                            struct job_error *err)
{
    struct convert_refs cr = { { o, pol, 0 }, { o, tpol, 0 }, r, r->chain };
    struct worker_hooks hooks = { convert_ref_open, &cr, convert_partial, r };
    struct worker_result res;

    /* A new job opens every chain anew. */
    policy_new_chain(pol);
    policy_new_chain(tpol);
    r->target_chain = 0;
    memset(err, 0, sizeof(*err));
    if (worker_run(&o->lim, o->ctx_flags, convert_job_run, job, fds, nfds,
                   &hooks, &res) < 0) {
        err->status = INS_EIO;
        snprintf(err->msg, sizeof(err->msg), "%s", res.errmsg);
        return NULL;
    }
    if (res.status != INS_OK) {
        err->status = res.status;
        err->plain = res.errmsg_plain;
        snprintf(err->msg, sizeof(err->msg), "%s", res.errmsg);
        return NULL;
    }
    return res.tree;
}

/* ---- the command line ---- */


/* -m: qemu 7.2's qemu_strtol check or 10.0's cvtnum_full(). */
static int parse_coroutines(const struct options *o, const char *arg)
{
    char *end;
    long v;

    errno = 0;
    v = strtol(arg, &end, 0);
    if (profile_at_least(&o->prof, 9, 0)) {
        unsigned long long u;

        errno = 0;
        u = strtoull(arg, &end, 0);
        if (end == arg || *end || arg[0] == '-' ||
            (errno && errno != ERANGE)) {
            die_msg(o, "Invalid number of coroutines specified: '%s'.", arg);
            return -1;
        }
        if (errno == ERANGE || u < 1 || u > 16) {
            die_msg(o, "Invalid number of coroutines specified. Must be "
                    "between 1 and 16.");
            return -1;
        }
        return 0;
    }
    if (end == arg || *end || errno || v < 1 || v > 16) {
        die_msg(o, "Invalid number of coroutines. Allowed number of "
                "coroutines is between 1 and 16");
        return -1;
    }
    return 0;
}

static int parse_sparse(const struct options *o, const char *arg,
                        struct convert_args *a)
{
    int64_t v = parse_size_arg(o, "buffer size for sparse output", arg);

    if (v < 0)
        return -1;
    if (v % 512 || v / 512 > 32768) {
        die_msg(o, "Invalid buffer size for sparse output specified. Valid "
                "sizes are multiples of 512 up to 16777216. Select 0 to "
                "disable sparse detection (fully allocates output).");
        return -1;
    }
    a->min_sparse = (uint64_t)v / 512;
    a->explicit_min_sparse = 1;
    return 0;
}

/* bdrv_parse_cache_mode()'s names. */
static int cache_mode_ok(const char *m)
{
    return !strcmp(m, "off") || !strcmp(m, "none") || !strcmp(m, "directsync") ||
           !strcmp(m, "writeback") || !strcmp(m, "unsafe") ||
           !strcmp(m, "writethrough");
}

/* Returns -1 to go on, or the exit status. */
static int parse_args(struct options *o, int argc, char **argv,
                      struct convert_args *a)
{
    static const struct option longopts_72[] = {
        { "help", no_argument, NULL, 'h' },
        { "object", required_argument, NULL, OPT_OBJECT },
        { "image-opts", no_argument, NULL, OPT_IMAGE_OPTS },
        { "force-share", no_argument, NULL, 'U' },
        { "target-image-opts", no_argument, NULL, OPT_TARGET_IMAGE_OPTS },
        { "salvage", no_argument, NULL, OPT_SALVAGE },
        { "target-is-zero", no_argument, NULL, OPT_TARGET_IS_ZERO },
        { "bitmaps", no_argument, NULL, OPT_BITMAPS },
        { "skip-broken-bitmaps", no_argument, NULL, OPT_SKIP_BROKEN },
        { "progress-fd", required_argument, NULL, OPT_PROGRESS_FD },
        { NULL, 0, NULL, 0 },
    };
    static const struct option longopts_10[] = {
        { "help", no_argument, NULL, 'h' },
        { "object", required_argument, NULL, OPT_OBJECT },
        { "quiet", no_argument, NULL, 'q' },
        { "progress", no_argument, NULL, 'p' },
        { "image-opts", no_argument, NULL, OPT_IMAGE_OPTS },
        { "source-image-opts", no_argument, NULL, OPT_IMAGE_OPTS },
        { "source-format", required_argument, NULL, 'f' },
        { "source-cache", required_argument, NULL, 'T' },
        { "snapshot", required_argument, NULL, 'l' },
        { "source-snapshot", required_argument, NULL, 'l' },
        { "sparse-size", required_argument, NULL, 'S' },
        { "output-format", required_argument, NULL, 'O' },
        { "target-format", required_argument, NULL, 'O' },
        { "options", required_argument, NULL, 'o' },
        { "target-options", required_argument, NULL, 'o' },
        { "output-cache", required_argument, NULL, 't' },
        { "target-cache", required_argument, NULL, 't' },
        { "backing", required_argument, NULL, 'B' },
        { "backing-format", required_argument, NULL, 'F' },
        { "compress", no_argument, NULL, 'c' },
        { "no-create", no_argument, NULL, 'n' },
        { "force-share", no_argument, NULL, 'U' },
        { "target-image-opts", no_argument, NULL, OPT_TARGET_IMAGE_OPTS },
        { "salvage", no_argument, NULL, OPT_SALVAGE },
        { "target-is-zero", no_argument, NULL, OPT_TARGET_IS_ZERO },
        { "bitmaps", no_argument, NULL, OPT_BITMAPS },
        { "skip-broken-bitmaps", no_argument, NULL, OPT_SKIP_BROKEN },
        { "rate", required_argument, NULL, 'r' },
        { "parallel", required_argument, NULL, 'm' },
        { "oob-writes", no_argument, NULL, 'W' },
        { "copy-range-offloading", no_argument, NULL, 'C' },
        { "progress-fd", required_argument, NULL, OPT_PROGRESS_FD },
        { NULL, 0, NULL, 0 },
    };
    int modern = profile_at_least(&o->prof, 9, 0);
    int c;

    optind = 0;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":hf:O:B:CcF:o:l:S:pt:T:qnm:WUr:",
                            modern ? longopts_10 : longopts_72, NULL)) != -1) {
        switch (c) {
        case 'h':
            printf(convert_help, o->progname);
            return 0;
        case 'f':
            a->fmt = optarg;
            break;
        case 'O':
            a->out_fmt = optarg;
            break;
        case 'B':
            a->out_baseimg = optarg;
            break;
        case 'C':
            a->copy_range = 1;
            break;
        case 'c':
            a->compressed = 1;
            break;
        case 'F':
            a->backing_fmt = optarg;
            break;
        case 'o':
            if (host_add_options(o, &a->options, optarg) < 0)
                return 1;
            break;
        case 'l':
            if (host_snapshot_param(o, optarg, &a->snapshot, &a->has_sn_opts,
                                    &a->sn_id, &a->sn_name) < 0)
                return 1;
            break;
        case 'S':
            if (parse_sparse(o, optarg, a) < 0)
                return 1;
            break;
        case 'p':
            a->progress = 1;
            break;
        case 'q':
            a->quiet = 1;
            break;
        case 'n':
            a->skip_create = 1;
            break;
        case 'm':
            if (parse_coroutines(o, optarg) < 0)
                return 1;
            break;
        case 'r':
            if (parse_size_arg(o, "rate limit", optarg) < 0)
                return 1;
            break;
        case 't':
            a->cache = optarg;
            break;
        case 'T':
            a->src_cache = optarg;
            break;
        case 'W':
        case 'U':
            break;
        case OPT_OBJECT: {
            struct co_error err;

            if (co_object_add(&a->objs, optarg, &err) < 0) {
                die_msg(o, "%s", err.msg);
                fputs(err.hint, stderr);
                return 1;
            }
            break;
        }
        case OPT_IMAGE_OPTS:
            a->image_opts = 1;
            break;
        case OPT_TARGET_IMAGE_OPTS:
            a->tgt_image_opts = 1;
            break;
        case OPT_SALVAGE:
            a->salvage = 1;
            break;
        case OPT_TARGET_IS_ZERO:
            a->target_is_zero = 1;
            break;
        case OPT_BITMAPS:
            a->bitmaps = 1;
            break;
        case OPT_SKIP_BROKEN:
            a->skip_broken = 1;
            break;
        case OPT_PROGRESS_FD: {
            char *end;
            long fd = strtol(optarg, &end, 10);

            if (end == optarg || *end || fd < 0 || fd > 1 << 20 ||
                fcntl((int)fd, F_GETFD) < 0) {
                die_msg(o, "--progress-fd: '%s' is not an open file descriptor",
                        optarg);
                return 1;
            }
            a->progress_fd = (int)fd;
            break;
        }
        default:
            return option_error(o, "convert", c, argv[optind - 1]);
        }
    }
    if (!a->out_fmt && !a->tgt_image_opts)
        a->out_fmt = "raw";
    if (a->skip_broken && !a->bitmaps) {
        die_msg(o, "Use of --skip-broken-bitmaps requires --bitmaps");
        return 1;
    }
    if (a->compressed && a->copy_range) {
        die_msg(o, "Cannot enable copy offloading when -c is used");
        return 1;
    }
    if (a->explicit_min_sparse && a->copy_range) {
        die_msg(o, "Cannot enable copy offloading when -S is used");
        return 1;
    }
    if (a->copy_range && a->salvage) {
        die_msg(o, "Cannot use copy offloading in salvaging mode");
        return 1;
    }
    if (a->tgt_image_opts && !a->skip_create) {
        die_msg(o, "--target-image-opts requires use of -n flag");
        return 1;
    }
    if (a->skip_create && a->options) {
        die_msg(o, "-o has no effect when skipping image creation");
        return 1;
    }
    if (a->target_is_zero && !a->skip_create) {
        die_msg(o, "--target-is-zero requires use of -n flag");
        return 1;
    }
    a->nsrc = argc - optind - 1;
    a->out_filename = a->nsrc >= 1 ? argv[argc - 1] : NULL;
    if (a->options && (strcmp(a->options, "help") == 0 ||
                       strstr(a->options, ",help") || strncmp(a->options, "help,", 5) == 0 ||
                       strcmp(a->options, "?") == 0)) {
        die_msg(o, "-o help is not supported by instar; see docs/convert.md");
        return 1;
    }
    if (a->nsrc < 1) {
        die_msg(o, "Must specify image file name");
        return 1;
    }
    if (a->src_cache && !cache_mode_ok(a->src_cache)) {
        die_msg(o, "Invalid source cache option: %s", a->src_cache);
        return 1;
    }
    if (a->nsrc > MAX_SOURCES) {
        die_msg(o, "At most %d source images are supported", MAX_SOURCES);
        return 1;
    }
    if (a->image_opts || a->tgt_image_opts) {
        refuse_image_opts(o);
        return 1;
    }
    if (a->bitmaps) {
        die_msg(o, "--bitmaps is not supported by instar yet");
        return 1;
    }
    a->srcs = argv + optind;
    return -1;
}

/* "N:message" from the worker names the source that failed to open. */
static void report_job_error(const struct options *o,
                             const struct convert_args *a,
                             struct job_error *jerr)
{
    char *end;
    long idx;

    if (!jerr->plain && jerr->msg[0] >= '0' && jerr->msg[0] <= '9') {
        idx = strtol(jerr->msg, &end, 10);
        if (*end == ':' && idx >= 0 && idx < a->nsrc) {
            memmove(jerr->msg, end + 1, strlen(end + 1) + 1);
            host_report_open_error(o, a->srcs[idx], jerr);
            return;
        }
    }
    die_msg(o, "%s", jerr->msg);
}

/* Sets one option as qemu_opt_set() does (the value taken literally). */
static int co_set_str(struct co_opts *co, const char *key, const char *value,
                      struct co_error *err)
{
    size_t len = strlen(key) + 2 * strlen(value) + 2;
    char *s = malloc(len), *p;
    int rc;

    if (!s)
        return -1;
    p = s + sprintf(s, "%s=", key);
    for (; *value; value++) {
        *p++ = *value;
        if (*value == ',')
            *p++ = ',';
    }
    *p = '\0';
    rc = co_parse(co, s, err);
    free(s);
    return rc;
}

/* ---- the target ---- */

struct target {
    char err[2048];             /* the error to print after the sources open */
    struct tree_builder tb;
    struct tree *opts;          /* the writer's option dict */
    char *backing, *backing_fmt;    /* owned */
};

static void set_err(struct target *t, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void set_err(struct target *t, const char *fmt, ...)
{
    va_list ap;

    if (t->err[0])
        return;
    va_start(ap, fmt);
    vsnprintf(t->err, sizeof(t->err), fmt, ap);
    va_end(ap);
}

/* The parsed -o options as the writer's dict (the last value of each). */
static void opts_to_tree(struct target *t, const struct co_opts *co)
{
    size_t i;

    for (i = 0; i < co->n; i++) {
        const struct co_opt *op = &co->opt[i];

        if (co_get(co, op->name) != op)
            continue;
        switch (op->type) {
        case CO_BOOL:
            tree_put_bool(&t->tb, t->opts, op->name, op->b);
            break;
        case CO_NUMBER:
        case CO_SIZE:
            tree_put_uint(&t->tb, t->opts, op->name, op->u);
            break;
        default:
            tree_put_str(&t->tb, t->opts, op->name, op->str);
        }
    }
}

/* Replaces (or adds) a member of the writer's dict. */
static void put_norm(struct target *t, const char *key, struct tree *v)
{
    struct tree *old = tree_take(t->opts, key);

    if (old)
        tree_free(t->tb.alloc, old);
    tree_put(&t->tb, t->opts, key, v);
}

/* BlockdevDriver's names: what backing_fmt may say to qcow2's create. */
static int known_driver(const char *name)
{
    static const char *const drivers[] = {
        "blkdebug", "blklogwrites", "blkreplay", "blkverify", "bochs", "cloop",
        "compress", "copy-before-write", "copy-on-read", "dmg", "file", "snapshot-access",
        "ftp", "ftps", "gluster", "host_cdrom", "host_device", "http", "https",
        "io_uring", "iscsi", "luks", "nbd", "nfs", "null-aio", "null-co", "nvme",
        "nvme-io_uring", "parallels", "preallocate", "qcow", "qcow2", "qed", "quorum",
        "raw", "rbd", "replication", "ssh", "throttle", "vdi", "vhdx", "virtio-blk-vfio-pci",
        "virtio-blk-vhost-user", "virtio-blk-vhost-vdpa", "vmdk", "vpc", "vvfat", NULL,
    };

    for (size_t i = 0; drivers[i]; i++)
        if (strcmp(drivers[i], name) == 0)
            return 1;
    return 0;
}

/*
 * qcow2_co_create_opts() and qcow2_co_create()'s checks in their order
 * (the QAPI enums first, then the combinations), with their messages;
 * measure's order and wording differ.  Fills q on success.
 */
static int qcow2_create_checks(const struct co_opts *co, struct co_qcow2 *q,
                               char *err, size_t errlen)
{
    const char *compat = co_get_str(co, "compat");
    const char *bfmt = co_get_str(co, "backing_fmt");
    const char *prealloc = co_get_str(co, "preallocation");
    const char *ctype = co_get_str(co, "compression_type");
    uint64_t cs = co_get_uint(co, "cluster_size", 65536), rb;
    enum co_prealloc mode = CO_PREALLOC_OFF;

    memset(q, 0, sizeof(*q));
    q->version = 3;
    if (compat) {
        if (strcmp(compat, "0.10") == 0 || strcmp(compat, "v2") == 0) {
            q->version = 2;
        } else if (strcmp(compat, "1.1") != 0 && strcmp(compat, "v3") != 0) {
            snprintf(err, errlen, "Parameter 'version' does not accept value '%s'", compat);
            return -1;
        }
    }
    if (bfmt && !known_driver(bfmt)) {
        snprintf(err, errlen, "Parameter 'backing-fmt' does not accept value '%s'", bfmt);
        return -1;
    }
    if (prealloc && co_prealloc_parse(prealloc, &mode) < 0) {
        snprintf(err, errlen, "Parameter 'preallocation' does not accept value '%s'",
                 prealloc);
        return -1;
    }
    if (ctype && strcmp(ctype, "zlib") != 0 && strcmp(ctype, "zstd") != 0) {
        snprintf(err, errlen, "Parameter 'compression-type' does not accept value '%s'",
                 ctype);
        return -1;
    }
    q->extended_l2 = co_get_bool(co, "extended_l2", 0);
    if (q->extended_l2 && q->version < 3) {
        snprintf(err, errlen, "Extended L2 entries are only supported with "
                 "compatibility level 1.1 and above (use version=v3 or greater)");
        return -1;
    }
    if (cs < 512 || cs > 2 * 1024 * 1024 || (cs & (cs - 1))) {
        snprintf(err, errlen, "Cluster size must be a power of two between 512 and 2048k");
        return -1;
    }
    if (q->extended_l2 && cs < 16384) {
        snprintf(err, errlen, "Extended L2 entries are only supported with "
                 "cluster sizes of at least 16384 bytes");
        return -1;
    }
    q->cluster_size = cs;
    q->prealloc = mode;
    q->backing_file = co_get_str(co, "backing_file");
    if (q->backing_file && mode != CO_PREALLOC_OFF && !q->extended_l2) {
        snprintf(err, errlen, "Backing file and preallocation can only be used "
                 "at the same time if extended_l2 is on");
        return -1;
    }
    if (bfmt && !q->backing_file) {
        snprintf(err, errlen, "Backing format cannot be used without backing file");
        return -1;
    }
    if (co_get_bool(co, "lazy_refcounts", 0) && q->version < 3) {
        snprintf(err, errlen, "Lazy refcounts only supported with compatibility "
                 "level 1.1 and above (use version=v3 or greater)");
        return -1;
    }
    rb = co_get_uint(co, "refcount_bits", 16);
    if (rb > 64 || rb == 0 || (rb & (rb - 1))) {
        snprintf(err, errlen, "Refcount width must be a power of two and may "
                 "not exceed 64 bits");
        return -1;
    }
    if (q->version < 3 && rb != 16) {
        snprintf(err, errlen, "Different refcount widths than 16 bits require "
                 "compatibility level 1.1 or above (use version=v3 or greater)");
        return -1;
    }
    q->refcount_bits = rb;
    if (co_get_bool(co, "data_file_raw", 0) && !co_get_str(co, "data_file")) {
        snprintf(err, errlen, "data-file-raw requires data-file");
        return -1;
    }
    if (co_get_str(co, "data_file")) {
        snprintf(err, errlen, "instar cannot write qcow2 images with an "
                 "external data file yet");
        return -1;
    }
    if (ctype && strcmp(ctype, "zlib") != 0 && q->version < 3) {
        snprintf(err, errlen, "Non-zlib compression type is only supported with "
                 "compatibility level 1.1 and above (use version=v3 or greater)");
        return -1;
    }
    if (co_get_bool(co, "encryption", 0) || co_get_str(co, "encrypt.format")) {
        snprintf(err, errlen, "instar cannot write encrypted qcow2 images yet");
        return -1;
    }
    return 0;
}

/* qemu-img convert's target checks from "Unknown file format" to the
 * compression rules; bdrv_create()'s own checks for qcow2. */
static void build_target(const struct options *o, struct convert_args *a,
                         struct target *t, const char *out_filename)
{
    int major = o->prof.major;
    const struct co_format *fmt;
    struct co_opts co;
    struct co_error err;
    const char *bf;

    tree_builder_init(&t->tb, &ins_libc_alloc);
    t->opts = tree_new_dict(&t->tb);
    if (a->skip_create) {
        t->backing = a->out_baseimg ? strdup(a->out_baseimg) : NULL;
        return;
    }
    fmt = co_find_format(a->out_fmt, major);
    if (!fmt) {
        set_err(t, "Unknown file format '%s'", a->out_fmt);
        return;
    }
    if (!fmt->desc) {
        set_err(t, "Format driver '%s' does not support image creation", fmt->name);
        return;
    }
    co_init(&co, fmt, major);
    co.progname = o->progname;
    if (a->options && co_parse(&co, a->options, &err) < 0) {
        set_err(t, "%s", err.msg);
        goto out;
    }
    /* add_old_style_options() */
    if (a->out_baseimg) {
        if (!co_find_desc(fmt, "backing_file", major)) {
            set_err(t, "Backing file not supported for file format '%s'", a->out_fmt);
            goto out;
        }
        if (co_set_str(&co, "backing_file", a->out_baseimg, &err) < 0) {
            set_err(t, "%s", err.msg);
            goto out;
        }
    }
    if (a->backing_fmt) {
        if (!co_find_desc(fmt, "backing_fmt", major)) {
            set_err(t, "Backing file format not supported for file format '%s'",
                    a->out_fmt);
            goto out;
        }
        if (co_set_str(&co, "backing_fmt", a->backing_fmt, &err) < 0) {
            set_err(t, "%s", err.msg);
            goto out;
        }
    }
    bf = co_get_str(&co, "backing_file");
    if (bf)
        t->backing = strdup(bf);
    if (a->target_is_zero && t->backing) {
        set_err(t, "Cannot use --target-is-zero when the destination image "
                "has a backing file");
        goto out;
    }
    if (a->nsrc > 1 && t->backing) {
        set_err(t, "Having a backing file for the target makes no sense when "
                "concatenating multiple input images");
        goto out;
    }
    if (bf && !co_get_str(&co, "backing_fmt")) {
        set_err(t, "Use of backing file requires explicit backing format");
        goto out;
    }
    if (co_get_str(&co, "backing_fmt"))
        t->backing_fmt = strdup(co_get_str(&co, "backing_fmt"));
    if (a->compressed) {
        const char *prealloc = co_get_str(&co, "preallocation");

        if (strcmp(fmt->name, "qcow2") != 0 && strcmp(fmt->name, "qcow") != 0 &&
            strcmp(fmt->name, "vmdk") != 0) {
            set_err(t, "Compression not supported for this file format");
            goto out;
        }
        if (co_get_bool(&co, "encryption", 0) || co_get_str(&co, "encrypt.format")) {
            set_err(t, "Compression and encryption not supported at the same time");
            goto out;
        }
        if (prealloc && strcmp(prealloc, "off") != 0) {
            set_err(t, "Compression and preallocation not supported at the same time");
            goto out;
        }
    }
    if (!ins_find_writer(fmt->name)) {
        set_err(t, "%s: error while converting %s: instar cannot write %s "
                "images yet", out_filename, fmt->name, fmt->name);
        goto out;
    }
    opts_to_tree(t, &co);
    if (strcmp(fmt->name, "qcow2") == 0) {
        struct co_qcow2 q;
        char msg[1024];

        if (qcow2_create_checks(&co, &q, msg, sizeof(msg)) < 0) {
            set_err(t, "%s: error while converting qcow2: %s", out_filename, msg);
            goto out;
        }
        put_norm(t, "cluster_size", tree_new_uint(&t->tb, q.cluster_size));
        put_norm(t, "compat", tree_new_str(&t->tb, q.version == 2 ? "0.10" : "1.1"));
        put_norm(t, "refcount_bits", tree_new_uint(&t->tb, q.refcount_bits));
        put_norm(t, "extended_l2", tree_new_bool(&t->tb, q.extended_l2));
        put_norm(t, "preallocation", tree_new_str(&t->tb,
                 q.prealloc == CO_PREALLOC_METADATA ? "metadata" :
                 q.prealloc == CO_PREALLOC_FALLOC ? "falloc" :
                 q.prealloc == CO_PREALLOC_FULL ? "full" : "off"));
    }
    if (t->tb.failed)
        set_err(t, "Out of memory");
    if (a->cache && !cache_mode_ok(a->cache))
        set_err(t, "Invalid cache option: %s", a->cache);
out:
    co_free(&co);
}

/* ---- creating the files ---- */

struct created {
    char *tmp, *final;
    int fd;
    int in_place;
};

static void created_drop(struct created *c, int keep)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    if (!keep && c->tmp && !c->in_place)
        unlink(c->tmp);
    free(c->tmp);
    free(c->final);
    c->tmp = c->final = NULL;
}

/* A temporary file next to name (O_EXCL, qemu's 0644), or the file itself
 * when it exists and is not a regular file.  Returns 0, or -1 with errno. */
static int create_target(const char *name, struct created *c)
{
    struct stat st;
    unsigned n;

    memset(c, 0, sizeof(*c));
    c->fd = -1;
    /* Through a symlink, as qemu writes through it: replace its target. */
    if (lstat(name, &st) == 0 && S_ISLNK(st.st_mode) && stat(name, &st) == 0)
        c->final = realpath(name, NULL);
    else
        c->final = strdup(name);
    if (!c->final)
        return -1;
    name = c->final;
    if (stat(name, &st) == 0 && !S_ISREG(st.st_mode) && !S_ISDIR(st.st_mode)) {
        c->in_place = 1;
        c->fd = open(name, O_RDWR | O_CLOEXEC);
        return c->fd < 0 ? -1 : 0;
    }
    if (stat(name, &st) == 0 && S_ISDIR(st.st_mode)) {
        errno = EISDIR;
        return -1;
    }
    for (n = 0; n < 100; n++) {
        struct timespec ts;
        size_t len = strlen(name) + 64;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        free(c->tmp);
        c->tmp = malloc(len);
        if (!c->tmp)
            return -1;
        snprintf(c->tmp, len, "%s.instar-%d-%lx", name, (int)getpid(),
                 (unsigned long)(ts.tv_nsec ^ (n * 2654435761u)));
        c->fd = open(c->tmp, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        if (c->fd >= 0 || errno != EEXIST)
            break;
    }
    if (c->fd < 0) {
        /* Report the error for the name the user gave. */
        int e = errno;

        free(c->tmp);
        c->tmp = NULL;
        errno = e;
        return -1;
    }
    return 0;
}

static int commit_target(struct created *c, int flush)
{
    if (c->in_place || !c->tmp)
        return 0;
    if ((flush && fsync(c->fd) < 0) || rename(c->tmp, c->final) < 0)
        return -1;
    free(c->tmp);
    c->tmp = NULL;
    return 0;
}

/* ---- running it ---- */

/*
 * Interrupted (^C, kill): the temporary files go, then the signal takes
 * its default course.  The worker, in the same process group, dies too.
 * unlink() is async-signal-safe; the names stay allocated while set.
 */
static struct created *volatile sig_main;
static struct created *volatile sig_extra;
static volatile size_t sig_n_extra;

static void on_signal(int sig)
{
    struct created *m = sig_main, *e = sig_extra;
    size_t i, n = sig_n_extra;

    if (m && m->tmp && !m->in_place)
        unlink(m->tmp);
    for (i = 0; e && i < n; i++)
        if (e[i].tmp && !e[i].in_place)
            unlink(e[i].tmp);
    signal(sig, SIG_DFL);
    raise(sig);
}

static void guard_signals(struct created *m, struct created *e, size_t n)
{
    static const int sigs[] = { SIGINT, SIGTERM, SIGHUP, SIGQUIT };

    sig_main = m;
    sig_extra = e;
    sig_n_extra = n;
    for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++)
        signal(sigs[i], m ? on_signal : SIG_DFL);
}

/*
 * The first of two jobs when the files to create depend on the size (vmdk
 * extents): opens the sources as the convert will and returns the
 * target's size, or reports the sources' error as the convert would and
 * returns -1.
 */
static int convert_size(struct options *o, const struct convert_args *a,
                        struct convert_job *job, struct policy *pol,
                        struct policy *tpol, struct convert_render *r,
                        const int *fds, size_t nfds, uint64_t *size)
{
    struct job_error jerr;
    struct tree *res;
    int64_t v;
    int ok = 0;

    job->size_only = 1;
    res = run_job(o, pol, tpol, job, fds, nfds, r, &jerr);
    job->size_only = 0;
    if (!res) {
        fflush(stdout);
        if (r->progress)
            putchar('\n');
        fflush(stdout);
        report_job_error(o, a, &jerr);
        return -1;
    }
    v = tree_get_int(res, "size", &ok);
    tree_free(&ins_libc_alloc, res);
    if (!ok || v < 0) {
        die_msg(o, "Could not get the size of the sources");
        return -1;
    }
    *size = (uint64_t)v;
    return 0;
}

static int run_convert(struct options *o, struct convert_args *a)
{
    struct convert_job *job = calloc(1, sizeof(*job));
    struct convert_render r;
    struct target t;
    struct created main_c, *extra_c = NULL;
    struct policy pol, tpol;
    struct job_error jerr;
    struct tree *res;
    int fds[MAX_SOURCES + 1 + MAX_EXTRA];
    char **extra_names = NULL;
    size_t n_extra = 0, nfds = 0, i;
    int status = 1, nproc;

    memset(&t, 0, sizeof(t));
    policy_init(&tpol, o->max_depth);
    memset(&main_c, 0, sizeof(main_c));
    main_c.fd = -1;
    if (!job) {
        die_msg(o, "Out of memory");
        return 1;
    }
    memset(&r, 0, sizeof(r));
    r.o = o;
    r.progress = a->progress && !a->quiet;
    r.progress_fd = a->progress_fd;
    r.quiet = a->quiet;
    /* qemu_progress_init() then qemu_progress_print(0, 100). */
    if (r.progress || r.progress_fd >= 0)
        print_progress(&r, 0);

    for (i = 0; i < (size_t)a->nsrc; i++) {
        fds[i] = host_open_checked(o, a->srcs[i], a->fmt);
        if (fds[i] < 0) {
            while (i-- > 0)
                close(fds[i]);
            goto out_progress;
        }
        job->src[i].filename = a->srcs[i];
        job->src[i].format = a->fmt;
    }
    nfds = (size_t)a->nsrc;
    job->nsrc = nfds;
    if (options_policy(o, &pol, a->srcs[0]) < 0)
        goto out_fds;
    for (i = 1; i < nfds; i++)
        if (policy_allow_image_dir(&pol, a->srcs[i]) < 0)
            goto out_policy;

    build_target(o, a, &t, a->out_filename);
    /* The target's backing file is named relative to the target (a
     * missing directory is reported when the target is created). */
    policy_allow_image_dir(&tpol, a->out_filename);
    policy_allow_image_dir(&tpol, a->srcs[0]);
    for (i = 0; i < o->n_allow_paths; i++)
        policy_allow_dir(&tpol, o->allow_paths[i]);

    job->out_filename = a->out_filename;
    job->out_fmt = a->out_fmt;
    job->skip_create = a->skip_create;
    job->create_opts = t.opts;
    job->backing = t.backing;
    job->backing_fmt = t.backing_fmt;
    job->has_sn_opts = a->has_sn_opts;
    job->sn_id = a->sn_id;
    job->sn_name = a->sn_name;
    job->snapshot = a->snapshot;
    job->flush = a->cache && strcmp(a->cache, "unsafe") != 0;
    job->copts.compressed = a->compressed;
    job->copts.copy_range = a->copy_range;
    job->copts.min_sparse = a->explicit_min_sparse ? a->min_sparse : 8;
    job->copts.has_zero_init = a->target_is_zero;
    job->copts.target_has_backing = t.backing != NULL;
    job->copts.salvage = a->salvage;
    job->copts.quiet = a->quiet;
    /* Progress always flows (qemu counts the work first anyway): it also
     * tells the host the worker is alive under an explicit CPU limit,
     * whose wall-clock bound counts silence. */
    job->copts.progress = 1;
    nproc = (int)sysconf(_SC_NPROCESSORS_ONLN);
    job->copts.threads = nproc > 1 ? (nproc > 16 ? 16 : nproc) : 1;
    /* INSTAR_CONVERT_THREADS: reader threads besides the writer (tuning). */
    if (getenv("INSTAR_CONVERT_THREADS")) {
        int n = atoi(getenv("INSTAR_CONVERT_THREADS"));

        job->copts.threads = n < 0 ? 0 : n > 16 ? 16 : n;
    }

    /* A large convert legitimately runs longer than the default CPU
     * limit (60 s, meant for inspecting images): lift the default, keep a
     * limit the user chose (--cpu-limit or the config file). */
    if (!o->cpu_limit_set)
        o->lim.cpu_seconds = 0;
    /* Create (or, with -n, open) the target. */
    if (!t.err[0] && a->skip_create) {
        main_c.fd = open(a->out_filename, O_RDWR | O_CLOEXEC | O_NOCTTY);
        main_c.in_place = 1;
        if (main_c.fd < 0)
            set_err(&t, "Could not open '%s': Could not open '%s': %s",
                    a->out_filename, a->out_filename, strerror(errno));
    } else if (!t.err[0]) {
        char err[1024];
        uint64_t size = 0;

        /* vmdk's flat and split extents: as many files as the size asks. */
        if (target_needs_size(a->out_fmt, t.opts) &&
            convert_size(o, a, job, &pol, &tpol, &r, fds, nfds, &size) < 0)
            goto out_job;
        if (create_target(a->out_filename, &main_c) < 0) {
            set_err(&t, "%s: error while converting %s: Could not create '%s': %s",
                    a->out_filename, a->out_fmt, a->out_filename, strerror(errno));
        } else if (target_extra_files(a->out_fmt, t.opts, a->out_filename, size,
                                      &extra_names, &n_extra, err, sizeof(err)) < 0) {
            set_err(&t, "%s: error while converting %s: %s", a->out_filename,
                    a->out_fmt, err);
        } else if (n_extra > MAX_EXTRA) {
            set_err(&t, "%s: error while converting %s: too many extent files",
                    a->out_filename, a->out_fmt);
        } else {
            extra_c = calloc(n_extra ? n_extra : 1, sizeof(*extra_c));
            for (i = 0; extra_c && i < n_extra; i++)
                extra_c[i].fd = -1;
            for (i = 0; extra_c && i < n_extra; i++) {
                char *path = policy_combine(a->out_filename, extra_names[i]);

                if (!path || create_target(path, &extra_c[i]) < 0) {
                    set_err(&t, "%s: error while converting %s: Could not create "
                            "'%s': %s", a->out_filename, a->out_fmt,
                            path ? path : extra_names[i], strerror(errno));
                    free(path);
                    break;
                }
                free(path);
                job->extra_names[i] = extra_names[i];
            }
            if (!extra_c)
                set_err(&t, "Out of memory");
            job->n_extra = n_extra;
        }
    }
    guard_signals(&main_c, extra_c, extra_c ? n_extra : 0);
    job->target_failed = t.err[0] != 0;
    if (!job->target_failed) {
        fds[nfds++] = main_c.fd;
        for (i = 0; i < n_extra; i++)
            fds[nfds++] = extra_c[i].fd;
    }

    res = run_job(o, &pol, &tpol, job, fds, nfds, &r, &jerr);
    if (!res) {
        fflush(stdout);
        if (r.progress)
            putchar('\n');
        fflush(stdout);
        report_job_error(o, a, &jerr);
        goto out_job;
    }
    if (job->target_failed) {
        tree_free(&ins_libc_alloc, res);
        if (r.progress)
            putchar('\n');
        die_msg(o, "%s", t.err);
        goto out_job;
    }
    tree_free(&ins_libc_alloc, res);
    /* The extents first: OUT appears last, complete.  Each has its final
     * name, the one the descriptor gives, once renamed. */
    for (i = 0; i < n_extra; i++)
        if (commit_target(&extra_c[i], job->flush) < 0) {
            die_msg(o, "%s: error while converting %s: Could not rename the "
                    "temporary file into place: %s", a->out_filename,
                    a->out_fmt, strerror(errno));
            goto out_job;
        }
    if (commit_target(&main_c, job->flush) < 0) {
        die_msg(o, "%s: error while converting %s: Could not rename the "
                "temporary file into place: %s", a->out_filename, a->out_fmt,
                strerror(errno));
        goto out_job;
    }
    if (r.progress || r.progress_fd >= 0)
        print_progress(&r, 100);
    if (r.progress)
        putchar('\n');
    status = 0;
out_job:
    guard_signals(NULL, NULL, 0);
    created_drop(&main_c, status == 0);
    for (i = 0; extra_c && i < n_extra; i++)
        created_drop(&extra_c[i], status == 0);
    free(extra_c);
    if (extra_names)
        targets_free(extra_names, n_extra);
    tree_free(&ins_libc_alloc, t.opts);
    free(t.backing);
    free(t.backing_fmt);
out_policy:
    policy_forget(&pol);
    policy_forget(&tpol);
out_fds:
    for (i = 0; i < (size_t)a->nsrc; i++)
        close(fds[i]);
    free(job);
    fflush(stdout);
    return status;
out_progress:
    if (r.progress)
        putchar('\n');
    free(job);
    return 1;
}

int cmd_convert(struct options *o, int argc, char **argv)
{
    struct convert_args a;
    int status;

    memset(&a, 0, sizeof(a));
    a.progress_fd = -1;
    status = parse_args(o, argc, argv, &a);
    if (status < 0)
        status = run_convert(o, &a);
    free(a.options);
    free(a.sn_id);
    free(a.sn_name);
    co_objects_free(&a.objs);
    return status;
}

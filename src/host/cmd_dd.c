/*
 * cmd_dd.c - `dd`: qemu-img dd's operands, checks, messages and output.
 *
 * qemu-img dd [-f FMT] [-O FMT] [bs=N] [count=N] [skip=N] if=IN of=OUT
 * creates OUT (raw by default) with the size that bs/count/skip select
 * and copies those guest bytes into it, every block written, zeros too.
 * As in qemu, count counts blocks from the start of the input, not from
 * the skip: the output holds blocks skip .. count-1.
 *
 * Two worker jobs: the first opens the input for its size (qemu reports
 * an input that cannot be opened before it creates anything); the host
 * then creates the output file and the second job lays out the image and
 * copies.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "createopts.h"
#include "jobs.h"
#include "../engine/dd.h"

static const char dd_help[] =
    "Usage: %s dd [-f FMT] [-O OUTPUT_FMT] [-U] [bs=BLOCK_SIZE] [count=BLOCKS]\n"
    "          [skip=BLOCKS] if=INPUT of=OUTPUT\n"
    "\n"
    "Copy INPUT's guest data into a new image OUTPUT, as qemu-img dd does.\n"
    "\n"
    "  -f FMT         format of INPUT (default: detect)\n"
    "  -O OUTPUT_FMT  format of OUTPUT (default raw)\n"
    "  -U             accepted for compatibility\n"
    "  bs=SIZE        block size (default 512; k, M, G... suffixes)\n"
    "  count=N        copy up to block N of the input (default: all)\n"
    "  skip=N         start at block N of the input\n"
    "\n"
    "See 'instar info --help' for instar's own options.\n";

enum { DD_BS = 1, DD_COUNT = 2, DD_IF = 4, DD_OF = 8, DD_SKIP = 16 };

struct dd_args {
    unsigned flags;
    int64_t bs;
    int64_t count;
    int64_t skip;
    const char *in, *out;
};

struct dd_job {
    struct image_job in;
    const char *out_filename, *out_fmt;
    int copy;                   /* 0: report the input's size only */
    uint64_t create_size;       /* the new image's size */
    uint64_t in_off, len;       /* guest bytes to copy */
};

/* qemu 10's count= and skip=: qemu_strtou64(), any base, no suffix. */
static int parse_u64(const struct options *o, const char *what,
                     const char *value, int64_t *out)
{
    const char *p = value;
    char *end;
    unsigned long long v;

    while (*p == ' ' || (*p >= '\t' && *p <= '\r'))
        p++;
    errno = 0;
    v = strtoull(value, &end, 0);
    if (end == value || *end || p[0] == 0) {
        die_msg(o, "Invalid %s specified: '%s'.", what, value);
        return -1;
    }
    /* A negative number is out of range, except "-0". */
    if (errno == ERANGE || v > INT64_MAX || (p[0] == '-' && v != 0)) {
        die_msg(o, "Invalid %s specified. Must be between 0 and %lld.", what,
                (long long)INT64_MAX);
        return -1;
    }
    *out = (int64_t)v;
    return 0;
}

/* bs=: a size between 1 and INT_MAX (qemu's cvtnum_full). */
static int parse_bs(const struct options *o, const char *value, int64_t *out)
{
    uint64_t v = 0;
    int hex = 0, rc = co_strtosz(value, &v, o->prof.major, &hex);

    if (hex)
        fprintf(stderr, "%s: warning: Using a multiplier suffix on hex numbers "
                "is deprecated: %s\n", o->progname, value);
    if (rc < 0 && rc != -ERANGE) {
        if (profile_at_least(&o->prof, 8, 0)) {
            die_msg(o, "Invalid bs specified: '%s'.", value);
        } else {
            die_msg(o, "Invalid bs specified. You may use k, M, G, T, P or E "
                    "suffixes for");
            die_msg(o, "kilobytes, megabytes, gigabytes, terabytes, petabytes "
                    "and exabytes.");
        }
        return -1;
    }
    if (rc < 0 || v < 1 || v > INT_MAX) {
        die_msg(o, "Invalid bs specified. Must be between 1 and %d.", INT_MAX);
        return -1;
    }
    *out = (int64_t)v;
    return 0;
}

/* One NAME=VALUE operand; -1 after printing qemu's error. */
static int dd_operand(const struct options *o, const char *arg,
                      struct dd_args *a)
{
    const char *val = strchr(arg, '=');
    int modern = profile_at_least(&o->prof, 8, 0);
    size_t n;
    int64_t v;

    if (!val) {
        die_msg(o, "unrecognized operand %s", arg);
        return -1;
    }
    n = (size_t)(val++ - arg);
    if (n == 2 && strncmp(arg, "bs", 2) == 0) {
        if (parse_bs(o, val, &a->bs) < 0)
            return -1;
        a->flags |= DD_BS;
    } else if ((n == 5 && strncmp(arg, "count", 5) == 0) ||
               (n == 4 && strncmp(arg, "skip", 4) == 0)) {
        const char *what = n == 5 ? "count" : "skip";

        if (modern) {
            if (parse_u64(o, what, val, &v) < 0)
                return -1;
        } else if ((v = parse_size_arg(o, what, val)) < 0) {
            return -1;
        }
        if (n == 5)
            a->count = v;
        else
            a->skip = v;
        a->flags |= n == 5 ? DD_COUNT : DD_SKIP;
    } else if (n == 2 && strncmp(arg, "if", 2) == 0) {
        a->in = val;
        a->flags |= DD_IF;
    } else if (n == 2 && strncmp(arg, "of", 2) == 0) {
        a->out = val;
        a->flags |= DD_OF;
    } else {
        die_msg(o, "unrecognized operand %.*s", (int)n, arg);
        return -1;
    }
    return 0;
}

/* In the worker: the input's size, or the whole copy. */
static int dd_job_run(struct ins_ctx *ctx, void *opaque, const int *fds,
                      size_t nfds, struct tree_builder *tb, struct tree **out)
{
    struct dd_job *job = opaque;
    const struct ins_writer *wr;
    struct ins_image *img;
    struct ins_bdev *outbd;
    struct ins_wimage *w = NULL;
    struct ins_create cr;
    struct timespec now;
    int rc;

    if (nfds < (job->copy ? 2u : 1u))
        return ins_error(ctx, INS_EINVAL, "no image");
    rc = job_open_image(ctx, &job->in, fds[0], &img);
    if (rc < 0)
        return rc;
    *out = tree_new_dict(tb);
    tree_put_uint(tb, *out, "size", img->virtual_size);
    if (!job->copy)
        return tb->failed ? ins_error(ctx, INS_ENOMEM, "Out of memory") : INS_OK;

    /* From here on errors are printed as they are. */
    wr = ins_find_writer(job->out_fmt);
    outbd = ins_malloc(ctx, sizeof(*outbd));
    if (!wr || !outbd)
        return ins_error_plain(ctx, INS_ENOTSUP, "writing %s images is not "
                               "supported", job->out_fmt);
    rc = worker_bdev_init(outbd, fds[1], job->out_filename);
    if (rc < 0)
        return ins_error_plain(ctx, rc, "%s: error while creating output "
                               "image: %s", job->out_filename, ins_strerror(rc));
    memset(&cr, 0, sizeof(cr));
    cr.size = job->create_size;
    cr.opts = tree_new_dict(tb);
    if (getrandom(cr.random, sizeof(cr.random), 0) != (ssize_t)sizeof(cr.random))
        return ins_error_plain(ctx, INS_EIO, "getrandom failed");
    clock_gettime(CLOCK_REALTIME, &now);
    cr.now_unix = (uint64_t)now.tv_sec;
    ctx->errmsg[0] = '\0';
    rc = wr->create(ctx, outbd, &cr, &w);
    if (rc < 0) {
        char msg[sizeof(ctx->errmsg)];

        memcpy(msg, ctx->errmsg, sizeof(msg));
        return ins_error_plain(ctx, rc, "%s: error while creating output "
                               "image: %s", job->out_filename,
                               msg[0] ? msg : ins_strerror(rc));
    }
    rc = ins_op_dd(ctx, img, job->in_off, job->len, w);
    if (rc == 0) {
        rc = wr->finish(w);
        if (rc < 0)
            ins_error(ctx, rc, "error while writing to output image file: %s",
                      ins_strerror(rc));
    }
    wr->close(w);
    if (rc < 0) {
        ctx->errmsg_plain = 1;
        return rc;
    }
    return tb->failed ? ins_error(ctx, INS_ENOMEM, "Out of memory") : INS_OK;
}

static int parse_options(struct options *o, int argc, char **argv,
                         const char **fmt, const char **out_fmt)
{
    static const struct option longopts_7[] = {
        { "help", no_argument, NULL, 'h' },
        { "object", required_argument, NULL, 'b' },
        { "image-opts", no_argument, NULL, 'I' },
        { "force-share", no_argument, NULL, 'U' },
        { NULL, 0, NULL, 0 },
    };
    static const struct option longopts_10[] = {
        { "help", no_argument, NULL, 'h' },
        { "object", required_argument, NULL, 'b' },
        { "format", required_argument, NULL, 'f' },
        { "output-format", required_argument, NULL, 'O' },
        { "image-opts", no_argument, NULL, 'I' },
        { "force-share", no_argument, NULL, 'U' },
        { NULL, 0, NULL, 0 },
    };
    const struct option *longopts =
        profile_at_least(&o->prof, 9, 0) ? longopts_10 : longopts_7;
    int c;

    optind = 0;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":hf:O:U", longopts, NULL)) != -1) {
        switch (c) {
        case 'h':
            printf(dd_help, o->progname);
            return 0;
        case 'f':
            *fmt = optarg;
            break;
        case 'O':
            *out_fmt = optarg;
            break;
        case 'U':
        case 'b':
            break;
        case 'I':
            refuse_image_opts(o);
            return 1;
        default:
            return option_error(o, "dd", c, argv[optind - 1]);
        }
    }
    return -1;
}

/* Creates (or truncates) the output file as qemu's file driver does. */
static int create_output(const struct options *o, const char *name)
{
    int fd = open(name, O_RDWR | O_CREAT | O_CLOEXEC | O_NOCTTY, 0644);

    if (fd < 0 || ftruncate(fd, 0) < 0) {
        die_msg(o, "%s: error while creating output image: Could not create "
                "'%s': %s", name, name, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    return fd;
}

int cmd_dd(struct options *o, int argc, char **argv)
{
    struct dd_args a = { 0, 512, 0, 0, NULL, NULL };
    const char *fmt = NULL, *out_fmt = "raw";
    const struct co_format *cf;
    struct dd_job job;
    struct job_error jerr;
    struct policy pol;
    struct tree *t;
    int64_t size;
    int fds[2] = { -1, -1 }, rc, ok, beyond;

    rc = parse_options(o, argc, argv, &fmt, &out_fmt);
    if (rc >= 0)
        return rc;
    for (int i = optind; i < argc; i++)
        if (dd_operand(o, argv[i], &a) < 0)
            return 1;
    if (!(a.flags & DD_IF) || !(a.flags & DD_OF)) {
        die_msg(o, "Must specify both input and output files");
        return 1;
    }

    /* The input first: its errors come before any about the output. */
    fds[0] = host_open_checked(o, a.in, fmt);
    if (fds[0] < 0)
        return 1;
    if (options_policy(o, &pol, a.in) < 0) {
        close(fds[0]);
        return 1;
    }
    memset(&job, 0, sizeof(job));
    job.in.filename = a.in;
    job.in.format = fmt;
    job.out_filename = a.out;
    job.out_fmt = out_fmt;
    t = host_run_job(o, &pol, dd_job_run, &job, fds, 1, NULL, NULL, &jerr);
    if (!t) {
        host_report_open_error(o, a.in, &jerr);
        goto fail;
    }
    size = tree_get_int(t, "size", &ok);
    tree_free(&ins_libc_alloc, t);
    if (!ok || size < 0) {
        die_msg(o, "Failed to get size for '%s'", a.in);
        goto fail;
    }

    cf = co_find_format(out_fmt, o->prof.major);
    if (!cf) {
        die_msg(o, "Unknown file format");
        goto fail;
    }
    if (!cf->desc) {
        die_msg(o, "Format driver '%s' does not support image creation",
                cf->name);
        goto fail;
    }
    if (!ins_find_writer(cf->name)) {
        die_msg(o, "%s: error while creating output image: instar cannot "
                "write %s images yet", a.out, cf->name);
        goto fail;
    }

    /* qemu's arithmetic: count ends the copy at block count of the input;
     * a skip past that end leaves an empty image (and a warning). */
    if ((a.flags & DD_COUNT) && a.count <= INT64_MAX / a.bs &&
        a.count * a.bs < size)
        size = a.count * a.bs;
    beyond = (a.flags & DD_SKIP) &&
             (a.skip > INT64_MAX / a.bs || size < a.bs * a.skip);
    job.create_size = beyond ? 0 : (uint64_t)(size - a.bs * a.skip);
    job.in_off = beyond ? 0 : (uint64_t)(a.bs * a.skip);
    job.len = job.create_size;
    job.out_fmt = cf->name;
    job.copy = 1;

    fds[1] = create_output(o, a.out);
    if (fds[1] < 0)
        goto fail;
    if (beyond)
        die_msg(o, "%s: cannot skip to specified offset", a.in);
    /* The second job opens the input's chain anew: not a loop. */
    policy_new_chain(&pol);
    t = host_run_job(o, &pol, dd_job_run, &job, fds, 2, NULL, NULL, &jerr);
    if (!t) {
        if (!jerr.plain)
            host_report_open_error(o, a.in, &jerr);
        else
            die_msg(o, "%s", jerr.msg);
        goto fail;
    }
    tree_free(&ins_libc_alloc, t);
    close(fds[0]);
    close(fds[1]);
    policy_forget(&pol);
    return 0;
fail:
    close(fds[0]);
    if (fds[1] >= 0)
        close(fds[1]);
    policy_forget(&pol);
    return 1;
}

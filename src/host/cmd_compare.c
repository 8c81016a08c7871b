/*
 * cmd_compare.c - `compare`: qemu-img compare's verdict and exit status
 * (0 identical, 1 different, 2 open error, 3 allocation error, 4 read
 * error), with both images read in one sandboxed worker.
 */
#include <fcntl.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "jobs.h"

static const char compare_help[] =
    "Usage: %s compare [-f FMT] [-F FMT] [-s] [-q] [-p] [-U] FILE1 FILE2\n"
    "\n"
    "Check whether two images have the same guest-visible content, as\n"
    "qemu-img compare does.  Exit status: 0 identical, 1 different, 2 an image\n"
    "could not be opened, 3 allocation status could not be read, 4 data could\n"
    "not be read.\n"
    "\n"
    "  -f FMT   format of FILE1 (default: detect)\n"
    "  -F FMT   format of FILE2 (default: detect)\n"
    "  -s       strict: differing sizes or allocation also count as different\n"
    "  -q       quiet: print nothing but errors\n"
    "  -p       show progress\n"
    "  -U       accepted for compatibility\n"
    "\n"
    "See 'instar info --help' for instar's own options.\n";

struct compare_job {
    struct image_job image[2];
    int strict;
    int progress;
};

static int compare_job_run(struct ins_ctx *ctx, void *opaque, const int *fds,
                           size_t nfds, struct tree_builder *tb,
                           struct tree **out)
{
    struct compare_job *job = opaque;
    struct ins_image *img[2];
    char *text = NULL;
    int i, rc;

    if (nfds < 2)
        return ins_error(ctx, INS_EINVAL, "no image");
    for (i = 0; i < 2; i++) {
        rc = job_open_image(ctx, &job->image[i], fds[i], &img[i]);
        if (rc < 0) {
            char msg[sizeof(ctx->errmsg)];

            /* Say which image failed: the host prefixes "Could not open". */
            snprintf(msg, sizeof(msg), "%s", ctx->errmsg);
            return ins_error(ctx, rc, "%d:%s", i, msg);
        }
    }
    rc = ins_op_compare(ctx, img[0], job->image[0].filename, img[1],
                        job->image[1].filename, job->strict, job->progress,
                        &text);
    if (rc < 0)
        return rc;
    *out = tree_new_dict(tb);
    tree_put_int(tb, *out, "status", rc);
    tree_put_str(tb, *out, "stdout", text ? text : "");
    if (rc >= 3)
        tree_put_str(tb, *out, "stderr", ctx->errmsg);
    ins_free(ctx, text);
    return tb->failed ? ins_error(ctx, INS_ENOMEM, "Out of memory") : INS_OK;
}

int cmd_compare(struct options *o, int argc, char **argv)
{
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "object", required_argument, NULL, 'o' },
        { "image-opts", no_argument, NULL, 'I' },
        { "force-share", no_argument, NULL, 'U' },
        { NULL, 0, NULL, 0 },
    };
    struct compare_job job;
    struct policy pol;
    struct tree *t;
    const char *fmt[2] = { NULL, NULL }, *name[2], *text, *err;
    struct job_error jerr;
    int c, i, fds[2] = { -1, -1 }, quiet = 0, strict = 0, progress = 0;
    int ok;
    int64_t verdict;

    optind = 0;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":hf:F:T:pqsU", longopts, NULL)) != -1) {
        switch (c) {
        case 'h':
            printf(compare_help, o->progname);
            return 0;
        case 'f':
            fmt[0] = optarg;
            break;
        case 'F':
            fmt[1] = optarg;
            break;
        case 'q':
            quiet = 1;
            break;
        case 's':
            strict = 1;
            break;
        case 'p':
            progress = 1;
            break;
        case 'T':
        case 'o':
        case 'U':
            break;
        case 'I':
            refuse_image_opts(o);
            return 2;
        default:
            return option_error(o, "compare", c, argv[optind - 1]);
        }
    }
    if (optind != argc - 2) {
        die_msg(o, "Expecting two image file names");
        usage_hint(o, "compare");
        return 1;
    }
    name[0] = argv[optind];
    name[1] = argv[optind + 1];
    for (i = 0; i < 2; i++) {
        fds[i] = host_open_checked(o, name[i], fmt[i]);
        if (fds[i] < 0) {
            if (i)
                close(fds[0]);
            if (progress && !quiet)
                putchar('\n');     /* qemu ends its progress meter */
            return 2;
        }
    }
    if (options_policy(o, &pol, name[0]) < 0 ||
        policy_allow_image_dir(&pol, name[1]) < 0) {
        close(fds[0]);
        close(fds[1]);
        return 2;
    }
    /* The same file may be compared with itself; loops are per chain. */
    memset(&job, 0, sizeof(job));
    for (i = 0; i < 2; i++) {
        job.image[i].filename = name[i];
        job.image[i].format = fmt[i];
    }
    job.strict = strict;
    job.progress = progress && !quiet;
    t = host_run_job(o, &pol, compare_job_run, &job, fds, 2, NULL, NULL, &jerr);
    close(fds[0]);
    close(fds[1]);
    policy_forget(&pol);
    if (!t) {
        if (progress && !quiet)
            putchar('\n');
        /* "N:message" names the image that failed to open. */
        if ((jerr.msg[0] == '0' || jerr.msg[0] == '1') && jerr.msg[1] == ':') {
            const char *which = name[jerr.msg[0] - '0'];

            memmove(jerr.msg, jerr.msg + 2, strlen(jerr.msg + 2) + 1);
            host_report_open_error(o, which, &jerr);
        } else {
            die_msg(o, "%s", jerr.msg);
        }
        return 2;
    }
    verdict = tree_get_int(t, "status", &ok);
    text = tree_get_str(t, "stdout");
    err = tree_get_str(t, "stderr");
    if (!ok || verdict < 0 || verdict > 4 || verdict == 2 || !text) {
        die_msg(o, "the worker's answer was malformed");
        tree_free(&ins_libc_alloc, t);
        return 2;
    }
    if (!quiet)
        fputs(text, stdout);
    if (err)
        die_msg(o, "%s", err);
    tree_free(&ins_libc_alloc, t);
    return (int)verdict;
}

/*
 * cmd_check.c - `check`: qemu-img check's report and exit status (0 clean,
 * 1 the check could not complete, 2 corruptions, 3 leaks only, 63 the
 * format has no check), with the image checked, and with -r repaired, in
 * the sandboxed worker.
 *
 * The worker runs what qemu-img's img_check() does after opening: the
 * driver's check, and when it fixed anything a second, read-only check
 * whose counters are reported with the first one's "fixed" counts.  The
 * lines a driver prints to stderr while checking arrive as partial results
 * and are written out as they come.
 */
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../engine/check.h"
#include "jobs.h"

static const char check_help[] =
    "Usage: %s check [-f FMT] [--output=human|json] [-r leaks|all] [-q] [-U] FILE\n"
    "\n"
    "Check the disk image FILE for consistency, as qemu-img check does, and\n"
    "with -r repair it.  Exit status: 0 no errors, 1 the check could not\n"
    "complete, 2 corruptions found, 3 only leaked clusters found, 63 the\n"
    "format does not support checks.\n"
    "\n"
    "  -f, --format=FMT      the image format (default: detect)\n"
    "  --output=human|json   output format (default human); in JSON, every\n"
    "                        counter is present (--unsafe-quirks: zero counters\n"
    "                        are omitted, as qemu-img does)\n"
    "  -r, --repair=leaks|all  repair leaked clusters, or everything; the image\n"
    "                        is opened read-write (backing files stay read-only)\n"
    "  -q, --quiet           print nothing but errors\n"
    "  -T, --cache=MODE      accepted for compatibility (validated, ignored)\n"
    "  -U, --force-share     accepted for compatibility (not with -r)\n"
    "  --object OBJDEF       accepted for compatibility and ignored\n"
    "  --image-opts          refused: option strings can name arbitrary files\n"
    "\n"
    "See 'instar info --help' for instar's own options.\n";

struct check_job {
    struct image_job image;
    unsigned fix;
};

/* The counters of one ImageCheck, in QAPI member order. */
static const char *const counter_keys[] = {
    "check-errors", "image-end-offset", "corruptions", "leaks",
    "corruptions-fixed", "leaks-fixed", "total-clusters",
    "allocated-clusters", "fragmented-clusters", "compressed-clusters",
};
#define N_COUNTERS (sizeof(counter_keys) / sizeof(counter_keys[0]))

static void result_counters(const struct ins_check_result *r, int64_t *v)
{
    v[0] = r->check_errors;
    v[1] = r->image_end_offset;
    v[2] = r->corruptions;
    v[3] = r->leaks;
    v[4] = r->corruptions_fixed;
    v[5] = r->leaks_fixed;
    v[6] = r->total_clusters;
    v[7] = r->allocated_clusters;
    v[8] = r->fragmented_clusters;
    v[9] = r->compressed_clusters;
}

/* Opens the image as qemu-img check does: for I/O, with BDRV_O_CHECK, and
 * read-write with -r (the host then handed us a writable descriptor). */
static int open_for_check(struct ins_ctx *ctx, const struct check_job *job,
                          int fd, struct ins_image **img)
{
    struct ins_bdev *bd = ins_malloc(ctx, sizeof(*bd));
    const struct ins_driver *drv;
    unsigned flags = INS_O_READ | INS_O_CHECK | (job->fix ? INS_O_WRITE : 0);
    int rc;

    if (!bd)
        return ins_error(ctx, INS_ENOMEM, "Out of memory");
    rc = job_open_driver(ctx, &job->image, fd, bd, &drv);
    if (rc < 0)
        return rc;
    return ins_image_open(ctx, bd, drv, flags, 1, img);
}

static int check_job_run(struct ins_ctx *ctx, void *opaque, const int *fds,
                         size_t nfds, struct tree_builder *tb,
                         struct tree **out)
{
    struct check_job *job = opaque;
    struct ins_check_result res, res2;
    struct ins_image *img;
    struct tree *counters;
    int64_t v[N_COUNTERS];
    size_t i;
    int rc;

    if (nfds < 1)
        return ins_error(ctx, INS_EINVAL, "no image");
    rc = open_for_check(ctx, job, fds[0], &img);
    if (rc < 0)
        return rc;
    /* Errors from here on are not "Could not open" errors. */
    *out = tree_new_dict(tb);
    tree_put_bool(tb, *out, "opened", 1);
    if (!tb->failed && ctx->emit)
        ctx->emit(ctx, *out);
    tree_free(tb->alloc, *out);
    *out = tree_new_dict(tb);
    tree_put_str(tb, *out, "format", img->drv->name);
    if (!img->drv->check) {
        tree_put_str(tb, *out, "status", "unsupported");
        goto done;
    }
    rc = ins_op_check(ctx, img, job->fix, &res);
    if (rc == INS_OK && (res.corruptions_fixed || res.leaks_fixed)) {
        /* qemu-img reports a second, read-only check of the fixed image,
         * with the first check's "fixed" counts. */
        struct tree *part = tree_new_dict(tb);

        /* qemu-img says so before the second check runs (its stderr
         * lines come after on a terminal). */
        tree_put_int(tb, part, "repaired-leaks", res.leaks_fixed);
        tree_put_int(tb, part, "repaired-corruptions", res.corruptions_fixed);
        if (!tb->failed && ctx->emit)
            ctx->emit(ctx, part);
        tree_free(tb->alloc, part);
        rc = ins_op_check(ctx, img, 0, &res2);
        res2.leaks_fixed = res.leaks_fixed;
        res2.corruptions_fixed = res.corruptions_fixed;
        res = res2;
    }
    if (rc == INS_ENOTSUP) {
        /* qemu-img treats the driver's -ENOTSUP as "no check". */
        tree_put_str(tb, *out, "status", "unsupported");
        goto done;
    }
    if (rc < 0) {
        tree_put_str(tb, *out, "status", "failed");
        tree_put_str(tb, *out, "error", ins_strerror(rc));
        goto done;
    }
    tree_put_str(tb, *out, "status", "ok");
    counters = tree_put_dict(tb, *out, "counters");
    result_counters(&res, v);
    for (i = 0; i < N_COUNTERS; i++)
        tree_put_int(tb, counters, counter_keys[i], v[i]);
done:
    ins_image_close(img);
    return tb->failed ? ins_error(ctx, INS_ENOMEM, "Out of memory") : INS_OK;
}

struct check_render {
    const struct options *o;
    int json;
    int quiet;
    int opened;                 /* the worker opened the image */
};

/* qemu-img's note between the repairing check and the second one. */
static int print_repaired(const struct check_render *cr, const struct tree *part)
{
    int ok;
    int64_t lf = tree_get_int(part, "repaired-leaks", &ok);
    int64_t cf = ok ? tree_get_int(part, "repaired-corruptions", &ok) : 0;

    if (!ok)
        return -1;
    if (!cr->json && !cr->quiet) {
        printf("The following inconsistencies were found and repaired:\n\n"
               "    %" PRId64 " leaked clusters\n"
               "    %" PRId64 " corruptions\n\n"
               "Double checking the fixed image now...\n", lf, cf);
        fflush(stdout);
    }
    return 0;
}

/* Partial results: stderr lines, relayed as they come. */
static int check_partial(void *opaque, const struct tree *part)
{
    struct check_render *cr = opaque;
    const struct options *o = cr->o;
    const char *line;

    if (part->type != TREE_DICT)
        return -1;
    if (tree_get(part, "opened")) {
        cr->opened = 1;
        return 0;
    }
    if (tree_get(part, "repaired-leaks"))
        return print_repaired(cr, part);
    line = tree_get_str(part, "stderr");
    if (!line)
        return -1;
    if (tree_get(part, "report"))
        fprintf(stderr, "%s: ", o->progname);
    fputs(line, stderr);
    fputc('\n', stderr);
    return 0;
}

/* bdrv_parse_cache_mode()'s accepted names. */
static int cache_mode_ok(const char *mode)
{
    static const char *const modes[] = {
        "off", "none", "directsync", "writeback", "unsafe", "writethrough",
    };
    size_t i;

    for (i = 0; i < sizeof(modes) / sizeof(modes[0]); i++)
        if (strcmp(mode, modes[i]) == 0)
            return 1;
    return 0;
}

static void print_human(const int64_t *v, int quiet)
{
    int64_t errors = v[0], corruptions = v[2], leaks = v[3];
    int64_t total = v[6], allocated = v[7];

    if (quiet)
        return;
    if (!(corruptions || leaks || errors)) {
        printf("No errors were found on the image.\n");
    } else {
        if (corruptions)
            printf("\n%" PRId64 " errors were found on the image.\n"
                   "Data may be corrupted, or further writes to the image "
                   "may corrupt it.\n", corruptions);
        if (leaks)
            printf("\n%" PRId64 " leaked clusters were found on the image.\n"
                   "This means waste of disk space, but no harm to data.\n",
                   leaks);
        if (errors)
            printf("\n%" PRId64 " internal errors have occurred during the "
                   "check.\n", errors);
    }
    if (total != 0 && allocated != 0)
        printf("%" PRId64 "/%" PRId64 " = %0.2f%% allocated, %0.2f%% "
               "fragmented, %0.2f%% compressed clusters\n",
               allocated, total, allocated * 100.0 / total,
               v[8] * 100.0 / allocated, v[9] * 100.0 / allocated);
    if (v[1])
        printf("Image end offset: %" PRId64 "\n", v[1]);
}

static void print_json(const struct options *o, const char *filename,
                       const char *format, const int64_t *v, int quiet)
{
    struct tree_builder tb;
    struct tree *d;
    size_t i;

    if (quiet)
        return;
    tree_builder_init(&tb, &ins_libc_alloc);
    d = tree_new_dict(&tb);
    tree_put_str(&tb, d, "filename", filename);
    tree_put_str(&tb, d, "format", format);
    for (i = 0; i < N_COUNTERS; i++) {
        /* check-errors is mandatory; qemu omits the others when zero.
         * instar's own schema keeps every counter. */
        if (i == 0 || v[i] != 0 || !(o->ctx_flags & INS_F_UNSAFE_QUIRKS))
            tree_put_int(&tb, d, counter_keys[i], v[i]);
    }
    if (!tb.failed) {
        render_json(stdout, d);
        putchar('\n');
    }
    tree_free(&ins_libc_alloc, d);
}

/* Renders the worker's answer; returns the exit status. */
static int report(const struct options *o, const char *filename,
                  const struct tree *t, int json, int quiet)
{
    const char *status = tree_get_str(t, "status");
    const char *format = tree_get_str(t, "format");
    const struct tree *counters;
    int64_t v[N_COUNTERS];
    size_t i;
    int ok;

    if (!status || !format)
        goto malformed;
    if (strcmp(status, "unsupported") == 0) {
        die_msg(o, "This image format does not support checks");
        return 63;
    }
    if (strcmp(status, "failed") == 0) {
        const char *err = tree_get_str(t, "error");

        die_msg(o, "Check failed: %s", err ? err : "Input/output error");
        return 1;
    }
    counters = tree_get(t, "counters");
    if (strcmp(status, "ok") != 0 || !counters || counters->type != TREE_DICT)
        goto malformed;
    for (i = 0; i < N_COUNTERS; i++) {
        v[i] = tree_get_int(counters, counter_keys[i], &ok);
        if (!ok)
            goto malformed;
    }
    if (json)
        print_json(o, filename, format, v, quiet);
    else
        print_human(v, quiet);
    if (v[0]) {
        die_msg(o, "Check failed");
        return 1;
    }
    return v[2] ? 2 : v[3] ? 3 : 0;
malformed:
    die_msg(o, "the worker's answer was malformed");
    return 1;
}

int cmd_check(struct options *o, int argc, char **argv)
{
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "quiet", no_argument, NULL, 'q' },
        { "format", required_argument, NULL, 'f' },
        { "cache", required_argument, NULL, 'T' },
        { "repair", required_argument, NULL, 'r' },
        { "output", required_argument, NULL, 'O' },
        { "object", required_argument, NULL, 'o' },
        { "image-opts", no_argument, NULL, 'I' },
        { "force-share", no_argument, NULL, 'U' },
        { NULL, 0, NULL, 0 },
    };
    int modern = profile_at_least(&o->prof, 9, 0);
    struct check_job job;
    struct check_render cr;
    struct policy pol;
    struct tree *t;
    const char *format = NULL, *filename, *output = NULL, *cache = NULL;
    struct job_error err;
    unsigned fix = 0;
    int json = 0, quiet = 0, force_share = 0, image_opts = 0, c, fd, status;

    optind = 0;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":hf:r:T:qU", longopts, NULL)) != -1) {
        switch (c) {
        case 'h':
            printf(check_help, o->progname);
            return 0;
        case 'f':
            format = optarg;
            break;
        case 'r':
            if (strcmp(optarg, "leaks") == 0) {
                fix = INS_CHECK_FIX_LEAKS;
            } else if (strcmp(optarg, "all") == 0) {
                fix = INS_CHECK_FIX_LEAKS | INS_CHECK_FIX_ERRORS;
            } else {
                if (modern)
                    die_msg(o, "--repair (-r) expects 'leaks' or 'all' not '%s'",
                            optarg);
                else
                    die_msg(o, "Unknown option value for -r (expecting 'leaks' "
                            "or 'all'): %s", optarg);
                usage_hint(o, "check");
                return 1;
            }
            break;
        case 'O':
            /* qemu 7.2 validates --output only after the file name. */
            if (modern && parse_output_format(o, "check", optarg, &json) < 0)
                return 1;
            output = optarg;
            break;
        case 'T':
            cache = optarg;
            break;
        case 'q':
            quiet = 1;
            break;
        case 'U':
            force_share = 1;
            break;
        case 'o':
            break;
        case 'I':
            image_opts = 1;
            break;
        default:
            return option_error(o, "check", c, argv[optind - 1]);
        }
    }
    if (optind != argc - 1) {
        die_msg(o, "Expecting one image file name");
        usage_hint(o, "check");
        return 1;
    }
    filename = argv[optind];
    if (output && !modern && parse_output_format(o, "check", output, &json) < 0)
        return 1;
    if (cache && !cache_mode_ok(cache)) {
        die_msg(o, "Invalid source cache option: %s", cache);
        return 1;
    }
    if (image_opts) {
        refuse_image_opts(o);
        return 1;
    }
    if (force_share && fix) {
        die_msg(o, "Could not open '%s': force-share=on can only be used with "
                "read-only images", filename);
        return 1;
    }
    if (strncmp(filename, "json:", 5) == 0 || (format && !ins_find_driver(format)))
        fd = host_open_checked(o, filename, format);    /* prints the error */
    else
        fd = host_open_image(o, filename, fix ? O_RDWR : O_RDONLY);
    if (fd < 0)
        return 1;
    if (options_policy(o, &pol, filename) < 0) {
        close(fd);
        return 1;
    }
    policy_note_open(&pol, fd);

    memset(&job, 0, sizeof(job));
    job.image.filename = filename;
    job.image.format = format;
    job.fix = fix;
    memset(&cr, 0, sizeof(cr));
    cr.o = o;
    cr.json = json;
    cr.quiet = quiet;
    t = host_run_job(o, &pol, check_job_run, &job, &fd, 1, check_partial,
                     &cr, &err);
    close(fd);
    policy_forget(&pol);
    if (!t) {
        if (cr.opened)
            die_msg(o, "Check failed: %s", err.msg);
        else
            host_report_open_error(o, filename, &err);
        return 1;
    }
    status = report(o, filename, t, json, quiet);
    tree_free(&ins_libc_alloc, t);
    return status;
}

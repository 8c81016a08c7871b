/*
 * cmd_inspect.c - `inspect`: the upload safety gate.
 *
 * Says what an image is (every format its content matches), its virtual
 * size, and whether it is safe, with a named reason for every check that
 * failed.  Exit status: 0 safe, 1 unsafe, 2 could not inspect.
 *
 * The image is judged in the sandboxed worker by engine/inspect.c, which
 * opens nothing but the one file.  FILE "-" is standard input: a pipe is
 * read forward as the upload arrives, only as far as the verdict needs
 * (worker/stream.c); a regular file on standard input is inspected as the
 * file itself.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../engine/inspect.h"
#include "../worker/stream.h"
#include "jobs.h"

#define EXIT_SAFE       0
#define EXIT_UNSAFE     1
#define EXIT_ERROR      2

static const char inspect_help[] =
    "Usage: %s inspect [--expected-format FMT] [--output=human|json] FILE\n"
    "\n"
    "Decide whether the disk image FILE is safe to accept (an upload gate):\n"
    "report its format, every format its content matches, its virtual size\n"
    "and a verdict with a named reason for every check that failed.  FILE may\n"
    "be '-': the image is read from standard input as it arrives, only as\n"
    "far as the verdict needs.  Nothing the image refers to is opened.\n"
    "\n"
    "Exit status: 0 safe, 1 unsafe, 2 could not inspect.\n"
    "\n"
    "  --expected-format FMT      the format the image claims to be (qcow2, raw,\n"
    "                             vmdk, vhd/vpc, vhdx, vdi, iso, ...): other\n"
    "                             content is unsafe\n"
    "  --output=human|json        output format (default human)\n"
    "  --max-virtual-size SIZE    largest acceptable virtual size (default 16T;\n"
    "                             0: no limit)\n"
    "  --vmdk-create-types LIST   acceptable vmdk createTypes, comma-separated\n"
    "                             (default monolithicSparse,streamOptimized)\n"
    "  --max-compression-ratio N  largest plausible expansion of compressed\n"
    "                             data (default 1032, deflate's bound; 0: off)\n"
    "  --stream-buffer SIZE       bytes of standard input kept for checks that\n"
    "                             read back (default 64M)\n"
    "\n"
    "Checks are listed in docs/inspect.md and instar(1).  See 'instar info\n"
    "--help' for instar's own options (--memory-limit, --cpu-limit, ...).\n";

struct inspect_job {
    const char *filename;
    int stream;                 /* fds[0] is forward-only */
    uint64_t retain;
    struct ins_inspect_opts opts;
};

static int drain_cb(void *opaque)
{
    return stream_drain(opaque);
}

static int inspect_job_run(struct ins_ctx *ctx, void *opaque, const int *fds,
                           size_t nfds, struct tree_builder *tb,
                           struct tree **out)
{
    struct inspect_job *job = opaque;
    struct ins_inspect_opts opts = job->opts;
    struct stream *s = NULL;
    struct ins_bdev bd;
    int rc;

    if (nfds < 1)
        return ins_error(ctx, INS_EINVAL, "no image");
    if (job->stream) {
        rc = stream_bdev_init(&bd, fds[0], job->filename, job->retain, &s);
        opts.stream = 1;
        opts.need_end = drain_cb;
        opts.opaque = s;
    } else {
        rc = worker_bdev_init(&bd, fds[0], job->filename);
    }
    if (rc < 0)
        return ins_error(ctx, rc, "Could not read '%s': %s", job->filename,
                         ins_strerror(rc));
    rc = ins_op_inspect(ctx, &bd, &opts, tb, out);
    if (rc == INS_OK && s && stream_gap_hit(s))
        ins_inspect_add_failure(tb, *out, "stream_limit",
                                "A check needed input beyond what is kept of "
                                "a stream (see --stream-buffer); inspect the "
                                "file instead");
    stream_free(s);
    if (rc == INS_OK && tb->failed)
        return ins_error(ctx, INS_ENOMEM, "Out of memory");
    return rc;
}

/* ---- output ---- */

static void json_str(const char *s)
{
    putchar('"');
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;

        if (c == '"' || c == '\\')
            printf("\\%c", c);
        else if (c < 0x20 || c == 0x7f)
            printf("\\u%04x", c);
        else
            putchar(c);
    }
    putchar('"');
}

static int get_bool(const struct tree *t, const char *key)
{
    const struct tree *b = tree_get(t, key);

    return b && b->type == TREE_BOOL && b->v.b;
}

/* The verdict is only what the worker says; anything malformed is no
 * verdict at all. */
static int well_formed(const struct tree *t)
{
    const struct tree *f = tree_get(t, "failures"), *l = tree_get(t, "formats"), *k;
    const struct tree *safe = tree_get(t, "safe");

    if (t->type != TREE_DICT || !f || f->type != TREE_LIST || !l ||
        l->type != TREE_LIST || !safe || safe->type != TREE_BOOL)
        return 0;
    for (k = l->v.kids.first; k; k = k->next)
        if (k->type != TREE_STR)
            return 0;
    for (k = f->v.kids.first; k; k = k->next)
        if (k->type != TREE_DICT || !tree_get_str(k, "check") ||
            !tree_get_str(k, "message"))
            return 0;
    /* Safe means no failure, whatever the worker claims. */
    return !(safe->v.b && f->v.kids.count);
}

static void print_json(const char *filename, const struct tree *t)
{
    const char *format = tree_get_str(t, "format");
    const struct tree *k, *vs = tree_get(t, "virtual-size");
    int first;

    printf("{\n    \"filename\": ");
    json_str(filename);
    printf(",\n    \"format\": ");
    if (format)
        json_str(format);
    else
        printf("null");
    printf(",\n    \"formats\": [");
    first = 1;
    for (k = tree_get(t, "formats")->v.kids.first; k; k = k->next) {
        printf("%s", first ? "" : ", ");
        json_str(k->v.str.s);
        first = 0;
    }
    printf("],\n    \"virtual-size\": ");
    if (vs && vs->type == TREE_UINT)
        printf("%" PRIu64, vs->v.u);
    else
        printf("null");
    printf(",\n    \"encrypted\": %s", get_bool(t, "encrypted") ? "true" : "false");
    printf(",\n    \"safe\": %s", get_bool(t, "safe") ? "true" : "false");
    printf(",\n    \"failures\": [");
    first = 1;
    for (k = tree_get(t, "failures")->v.kids.first; k; k = k->next) {
        printf("%s\n        {\n            \"check\": ", first ? "" : ",");
        json_str(tree_get_str(k, "check"));
        printf(",\n            \"message\": ");
        json_str(tree_get_str(k, "message"));
        printf("\n        }");
        first = 0;
    }
    printf("%s]\n}\n", first ? "" : "\n    ");
}

static void print_human(const char *filename, const struct tree *t)
{
    const char *format = tree_get_str(t, "format");
    const struct tree *k, *vs = tree_get(t, "virtual-size");
    char size[64];
    int first = 1;

    printf("file: %s\n", filename);
    printf("format: %s\n", format ? format : "unknown");
    printf("formats:");
    for (k = tree_get(t, "formats")->v.kids.first; k; k = k->next) {
        printf("%s%s", first ? " " : ", ", k->v.str.s);
        first = 0;
    }
    printf("%s\n", first ? " none" : "");
    if (vs && vs->type == TREE_UINT) {
        render_size(size, sizeof(size), vs->v.u, 0);
        printf("virtual size: %s (%" PRIu64 " bytes)\n", size, vs->v.u);
    } else {
        printf("virtual size: unknown\n");
    }
    printf("encrypted: %s\n", get_bool(t, "encrypted") ? "yes" : "no");
    printf("verdict: %s\n", get_bool(t, "safe") ? "safe" : "UNSAFE");
    for (k = tree_get(t, "failures")->v.kids.first; k; k = k->next)
        printf("  %s: %s\n", tree_get_str(k, "check"), tree_get_str(k, "message"));
}

/* ---- the command ---- */

/* The input: a descriptor, and whether it can only be read forward. */
static int open_input(const struct options *o, const char *filename,
                      int *stream)
{
    struct stat st;
    int fd;

    *stream = 0;
    if (strcmp(filename, "-") != 0) {
        if (strncmp(filename, "json:", 5) == 0) {
            die_msg(o, "Could not open '%s': json: file names are not supported "
                    "(they can name arbitrary files and protocols)", filename);
            return -1;
        }
        return host_open_image(o, filename, O_RDONLY);
    }
    /* Standard input, duplicated: the worker makes its own 0 /dev/null. */
    fd = fcntl(0, F_DUPFD_CLOEXEC, 3);
    if (fd < 0 || fstat(fd, &st) < 0) {
        die_msg(o, "Could not read standard input: %s", strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    if (S_ISDIR(st.st_mode)) {
        die_msg(o, "Could not read standard input: it is a directory");
        close(fd);
        return -1;
    }
    /* A regular file or a disk is inspected as itself (from its start,
     * as a file argument would be). */
    *stream = !S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode);
    return fd;
}

/* qemu's format names, and OpenStack's for VHD and partitioned disks. */
static int known_format(const char *name)
{
    return ins_find_driver(name) || strcmp(name, "vhd") == 0 ||
           strcmp(name, "gpt") == 0;
}

static int parse_uint_arg(const struct options *o, const char *what,
                          const char *value, uint64_t *out)
{
    char *end;
    unsigned long long v;

    errno = 0;
    v = strtoull(value, &end, 10);
    if (errno || end == value || *end || value[0] == '-') {
        die_msg(o, "Invalid %s: '%s'", what, value);
        return -1;
    }
    *out = v;
    return 0;
}

int cmd_inspect(struct options *o, int argc, char **argv)
{
    enum { OPT_EXPECTED = 256, OPT_MAXVS, OPT_VMDK, OPT_RATIO, OPT_BUFFER };
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "output", required_argument, NULL, 'O' },
        { "expected-format", required_argument, NULL, OPT_EXPECTED },
        { "max-virtual-size", required_argument, NULL, OPT_MAXVS },
        { "vmdk-create-types", required_argument, NULL, OPT_VMDK },
        { "max-compression-ratio", required_argument, NULL, OPT_RATIO },
        { "stream-buffer", required_argument, NULL, OPT_BUFFER },
        { NULL, 0, NULL, 0 },
    };
    struct inspect_job job;
    struct job_error err;
    struct policy pol;
    struct tree *t;
    const char *filename;
    int json = 0, c, fd, status;
    int64_t n;

    memset(&job, 0, sizeof(job));
    job.retain = STREAM_DEFAULT_RETAIN;
    job.opts.max_virtual_size = INS_INSPECT_MAX_VSIZE;
    job.opts.vmdk_types = INS_INSPECT_VMDK_TYPES;
    job.opts.max_ratio = INS_INSPECT_MAX_RATIO;
    optind = 0;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
        switch (c) {
        case 'h':
            printf(inspect_help, o->progname);
            return EXIT_SAFE;
        case 'O':
            if (parse_output_format(o, "inspect", optarg, &json) < 0)
                return EXIT_ERROR;
            break;
        case OPT_EXPECTED:
            job.opts.expected_format = optarg;
            break;
        case OPT_MAXVS:
            n = parse_size_arg(o, "virtual size limit", optarg);
            if (n < 0)
                return EXIT_ERROR;
            job.opts.max_virtual_size = (uint64_t)n;
            break;
        case OPT_VMDK:
            job.opts.vmdk_types = optarg;
            break;
        case OPT_RATIO:
            if (parse_uint_arg(o, "compression ratio", optarg,
                               &job.opts.max_ratio) < 0)
                return EXIT_ERROR;
            break;
        case OPT_BUFFER:
            n = parse_size_arg(o, "stream buffer size", optarg);
            if (n < 0)
                return EXIT_ERROR;
            job.retain = (uint64_t)n;
            break;
        default:
            option_error(o, "inspect", c, argv[optind - 1]);
            return EXIT_ERROR;
        }
    }
    if (optind != argc - 1) {
        die_msg(o, "Expecting one image file name");
        usage_hint(o, "inspect");
        return EXIT_ERROR;
    }
    filename = argv[optind];
    if (job.opts.expected_format && !known_format(job.opts.expected_format)) {
        die_msg(o, "Unknown format '%s' for --expected-format",
                job.opts.expected_format);
        return EXIT_ERROR;
    }
    fd = open_input(o, filename, &job.stream);
    if (fd < 0)
        return EXIT_ERROR;
    job.filename = filename;
    /* Inspection opens no references: an empty policy refuses them all. */
    policy_init(&pol, o->max_depth);
    t = host_run_job(o, &pol, inspect_job_run, &job, &fd, 1, NULL, NULL, &err);
    close(fd);
    policy_forget(&pol);
    if (!t) {
        die_msg(o, "Could not inspect '%s': %s", filename, err.msg);
        return EXIT_ERROR;
    }
    if (!well_formed(t)) {
        die_msg(o, "Could not inspect '%s': the worker's answer was malformed",
                filename);
        tree_free(&ins_libc_alloc, t);
        return EXIT_ERROR;
    }
    if (json)
        print_json(filename, t);
    else
        print_human(filename, t);
    status = get_bool(t, "safe") ? EXIT_SAFE : EXIT_UNSAFE;
    tree_free(&ins_libc_alloc, t);
    return status;
}

/*
 * cmd_measure.c - `measure`: qemu-img measure's "required size" and
 * "fully allocated size" for converting FILE (or a new image of --size)
 * to the -O format with the -o options.
 *
 * The options are parsed and checked in the host (createopts.c); with a
 * FILE the worker opens it, walks its allocation at the target's cluster
 * size and sizes its bitmaps (engine/measure.c).  The arithmetic is the
 * engine's too, run here: it reads no image bytes.
 *
 * qemu-img checks in this order, and so does instar: command line, open
 * FILE, target format, option syntax, the format's option checks, the
 * size limit, the source's allocation.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cmd_measure.h"
#include "createopts.h"
#include "jobs.h"
#include "../engine/measure.h"

static const char measure_help[] =
    "Usage: %s measure [--output=human|json] [-O FMT] [-o OPTIONS]\n"
    "                  [--object secret,...] [--size N | [-f FMT] FILE]\n"
    "\n"
    "Calculate the file size a new image needs, as qemu-img measure does: for\n"
    "a new image of N bytes, or for converting FILE.  FILE is read in a\n"
    "sandboxed worker; backing files are opened only under the allowed\n"
    "directories.\n"
    "\n"
    "  -O, --target-format=FMT  target format (default raw): qcow2, raw, luks;\n"
    "                           vmdk, vpc, vhdx and vdi get instar's upper bound\n"
    "                           (see docs/measure.md; --unsafe-quirks: qemu's\n"
    "                           error instead)\n"
    "  -o, --options=OPTIONS    the target's creation options (key=value,...)\n"
    "  -s, --size=N             measure a new image of N bytes\n"
    "  -f, --format=FMT         the format of FILE (default: detect)\n"
    "  --output=human|json      output format (default human)\n"
    "  --object secret,id=ID,data=...|file=...\n"
    "                           a secret for encrypt.key-secret (LUKS)\n"
    "  -l, --snapshot=SNAPSHOT  measure FILE's internal snapshot SNAPSHOT (an id\n"
    "                           or name, or snapshot.id=ID,snapshot.name=NAME)\n"
    "  -U, --force-share        accepted for compatibility\n"
    "\n"
    "See 'instar info --help' for instar's own options.\n";

/* ---- the worker's part ---- */

struct measure_job {
    struct image_job image;
    struct ins_measure_target target;
    int scan;                   /* the target's options were valid */
    int parallels_bitmaps;
    /* -l: snapshot.id=/snapshot.name= (has_sn_opts), else an id or name. */
    int has_sn_opts;
    const char *sn_id, *sn_name, *snapshot;
};

static int measure_job_run(struct ins_ctx *ctx, void *opaque, const int *fds,
                           size_t nfds, struct tree_builder *tb,
                           struct tree **out)
{
    struct measure_job *job = opaque;
    struct ins_measure_source src;
    struct ins_image *img;
    uint64_t gran = 0, bm_cluster = 0;
    int rc;

    if (nfds < 1)
        return ins_error(ctx, INS_EINVAL, "no image");
    /* Later errors are not open errors. */
    rc = job_open_image_announced(ctx, &job->image, fds[0], tb, &img);
    if (rc < 0)
        return rc;
    if (job->has_sn_opts || job->snapshot) {
        char msg[sizeof(ctx->errmsg)];

        if (job->has_sn_opts)
            rc = ins_image_load_snapshot(img, job->sn_id, job->sn_name);
        else
            rc = ins_image_load_snapshot_by_id_or_name(img, job->snapshot);
        if (rc < 0) {
            snprintf(msg, sizeof(msg), "%s", ctx->errmsg);
            return ins_error(ctx, rc, "Failed to load snapshot: %s", msg);
        }
    }
    if (job->scan) {
        gran = ins_measure_granularity(&job->target, img->virtual_size);
        if (job->target.fmt == INS_MEASURE_QCOW2 && job->target.version >= 3)
            bm_cluster = job->target.cluster_size;
    }
    rc = ins_measure_scan(ctx, img, gran, bm_cluster, job->parallels_bitmaps,
                          &src);
    if (rc < 0)
        return rc;
    *out = tree_new_dict(tb);
    tree_put_uint(tb, *out, "length", src.length);
    tree_put_uint(tb, *out, "data", src.data_bytes);
    tree_put_bool(tb, *out, "scanned", src.scanned);
    tree_put_bool(tb, *out, "bitmaps-supported", src.supports_bitmaps);
    tree_put_uint(tb, *out, "bitmaps", src.bitmaps_size);
    return tb->failed ? ins_error(ctx, INS_ENOMEM, "Out of memory") : INS_OK;
}

static int note_opened(void *opaque, const struct tree *part)
{
    int *opened = opaque;

    if (part->type != TREE_DICT || !tree_get(part, "opened"))
        return -1;
    *opened = 1;
    return 0;
}

static int get_u64(const struct tree *t, const char *key, uint64_t *v)
{
    const struct tree *m = tree_get(t, key);

    if (!m)
        return -1;
    if (m->type == TREE_UINT)
        *v = m->v.u;
    else if (m->type == TREE_INT && m->v.i >= 0)
        *v = (uint64_t)m->v.i;
    else if (m->type == TREE_BOOL)
        *v = (uint64_t)m->v.b;
    else
        return -1;
    return 0;
}

/* The worker's answer, checked field by field. */
static int read_source(const struct tree *t, struct ins_measure_source *src)
{
    uint64_t scanned, supported;

    memset(src, 0, sizeof(*src));
    if (t->type != TREE_DICT || get_u64(t, "length", &src->length) < 0 ||
        get_u64(t, "data", &src->data_bytes) < 0 ||
        get_u64(t, "scanned", &scanned) < 0 ||
        get_u64(t, "bitmaps-supported", &supported) < 0 ||
        get_u64(t, "bitmaps", &src->bitmaps_size) < 0 ||
        src->length > INT64_MAX)
        return -1;
    src->scanned = scanned != 0;
    src->supports_bitmaps = supported != 0;
    return 0;
}

/* ---- the target ---- */

/* Where the target checks stopped: printed once FILE has opened. */
struct target_error {
    int failed;
    struct co_error err;
    char format[64];            /* "Invalid options for file format" */
};

static void set_target_error(struct target_error *te, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void set_target_error(struct target_error *te, const char *fmt, ...)
{
    va_list ap;

    te->failed = 1;
    va_start(ap, fmt);
    vsnprintf(te->err.msg, sizeof(te->err.msg), fmt, ap);
    va_end(ap);
    te->err.hint[0] = '\0';
}

static int enum_value(const char *const *names, const char *s)
{
    int i;

    for (i = 0; names[i]; i++)
        if (strcmp(names[i], s) == 0)
            return i;
    return -1;
}

/* vmdk_co_create_opts()/vmdk_co_do_create()'s checks, in their order. */
static int vmdk_target(const struct co_opts *co, struct ins_measure_target *t,
                       struct target_error *te)
{
    static const char *const subformats[] = {
        "monolithicSparse", "monolithicFlat", "twoGbMaxExtentSparse",
        "twoGbMaxExtentFlat", "streamOptimized", NULL,
    };
    static const char *const adapters[] = {
        "ide", "buslogic", "lsilogic", "legacyESX", NULL,
    };
    const char *backing_fmt = co_get_str(co, "backing_fmt");
    const char *adapter = co_get_str(co, "adapter_type");
    const char *subfmt = co_get_str(co, "subformat");
    const char *hw = co_get_str(co, "hwversion");
    int sub = 0, flat;

    if (backing_fmt && strcmp(backing_fmt, "vmdk") != 0) {
        set_target_error(te, "backing_file must be a vmdk image");
        return -1;
    }
    if (adapter && enum_value(adapters, adapter) < 0) {
        set_target_error(te, "invalid parameter value: %s", adapter);
        return -1;
    }
    if (subfmt) {
        sub = enum_value(subformats, subfmt);
        if (sub < 0) {
            set_target_error(te, "invalid parameter value: %s", subfmt);
            return -1;
        }
    }
    if (hw && strcmp(hw, "undefined") == 0)
        hw = NULL;
    if (co_get_bool(co, "compat6", 0) && hw) {
        set_target_error(te, "compat6 cannot be enabled with hwversion set");
        return -1;
    }
    t->vmdk_subfmt = (enum ins_vmdk_subfmt)sub;
    flat = sub == INS_VMDK_MONOLITHIC_FLAT || sub == INS_VMDK_TWO_GB_FLAT;
    t->has_backing = co_get_str(co, "backing_file") != NULL;
    if (flat && t->has_backing) {
        set_target_error(te, "Flat image can't have backing file");
        return -1;
    }
    if (flat && co_get_bool(co, "zeroed_grain", 0)) {
        set_target_error(te, "Flat image can't enable zeroed grain");
        return -1;
    }
    return 0;
}

static int subformat(const struct co_opts *co, const char *fixed_name,
                     int *fixed, struct target_error *te)
{
    const char *s = co_get_str(co, "subformat");

    *fixed = 0;
    if (!s || strcmp(s, "dynamic") == 0)
        return 0;
    if (strcmp(s, fixed_name) == 0) {
        *fixed = 1;
        return 0;
    }
    set_target_error(te, "Parameter 'subformat' does not accept value '%s'", s);
    return -1;
}

/* The file protocol's preallocation, as creating the file checks it. */
static int file_prealloc(const struct co_opts *co, struct target_error *te)
{
    const char *s = co_get_str(co, "preallocation");
    enum co_prealloc mode;

    if (!s)
        return 0;
    if (co_prealloc_parse(s, &mode) < 0) {
        set_target_error(te, "invalid parameter value: %s", s);
        return -1;
    }
    if (mode == CO_PREALLOC_METADATA) {
        set_target_error(te, "Unsupported preallocation mode: metadata");
        return -1;
    }
    return 0;
}

/*
 * Parses -O, -o and --size into the engine's target description, with
 * qemu's checks in qemu's order.  A failure is recorded in te, not
 * printed: qemu opens FILE first.
 */
static void build_target(const struct options *o, const char *out_fmt,
                         const char *options, int has_size, uint64_t size,
                         struct co_objects *objs,
                         struct ins_measure_target *t, struct target_error *te)
{
    int major = o->prof.major;
    const struct co_format *fmt = co_find_format(out_fmt, major);
    struct co_opts co;

    memset(t, 0, sizeof(*t));
    memset(te, 0, sizeof(*te));
    if (!fmt) {
        set_target_error(te, "Unknown file format '%s'", out_fmt);
        return;
    }
    if (!fmt->desc) {
        set_target_error(te, "Format driver '%s' does not support image creation", fmt->name);
        return;
    }
    co_init(&co, fmt, major);
    co.progname = o->progname;
    if (options && co_parse(&co, options, &te->err) < 0) {
        te->failed = 1;
        snprintf(te->format, sizeof(te->format), "%s", out_fmt);
        goto out;
    }
    if (has_size && co_set_size(&co, "size", size) < 0) {
        set_target_error(te, "Out of memory");
        goto out;
    }
    t->size = co_get_uint(&co, "size", 0);

    if (strcmp(fmt->name, "qcow2") == 0) {
        struct co_qcow2 q;

        if (co_qcow2_params(&co, co_secret_lookup, objs, &q, &te->err) < 0) {
            te->failed = 1;
            goto out;
        }
        t->fmt = INS_MEASURE_QCOW2;
        t->cluster_size = q.cluster_size;
        t->refcount_bits = q.refcount_bits;
        t->version = q.version;
        t->extended_l2 = q.extended_l2;
        t->prealloc_full = q.prealloc == CO_PREALLOC_FALLOC ||
                           q.prealloc == CO_PREALLOC_FULL;
        t->has_backing = q.backing_file != NULL;
        t->luks_header = q.has_luks ? q.luks.header_len : 0;
    } else if (strcmp(fmt->name, "raw") == 0) {
        /* raw_measure() looks at nothing but the size. */
        t->fmt = INS_MEASURE_RAW;
    } else if (strcmp(fmt->name, "luks") == 0) {
        struct co_luks l;

        if (co_luks_params(&co, "", co_secret_lookup, objs, &l, &te->err) < 0) {
            te->failed = 1;
            goto out;
        }
        t->fmt = INS_MEASURE_LUKS;
        t->luks_header = l.header_len;
    } else if ((o->ctx_flags & INS_F_UNSAFE_QUIRKS) || !(
               strcmp(fmt->name, "vmdk") == 0 || strcmp(fmt->name, "vpc") == 0 ||
               strcmp(fmt->name, "vhdx") == 0 || strcmp(fmt->name, "vdi") == 0)) {
        set_target_error(te, "Block driver '%s' does not support size measurement", fmt->name);
    } else if (strcmp(fmt->name, "vmdk") == 0) {
        /* vmdk creates its extent files after its own checks. */
        t->fmt = INS_MEASURE_VMDK;
        if (vmdk_target(&co, t, te) == 0)
            file_prealloc(&co, te);
    } else if (file_prealloc(&co, te) < 0) {
        /* vpc, vhdx and vdi create the file first */
    } else if (strcmp(fmt->name, "vpc") == 0) {
        t->fmt = INS_MEASURE_VPC;
        t->vpc_force_size = co_get_bool(&co, "force_size", 0);
        subformat(&co, "fixed", &t->vpc_fixed, te);
    } else if (strcmp(fmt->name, "vhdx") == 0) {
        t->fmt = INS_MEASURE_VHDX;
        t->vhdx_block_size = co_get_uint(&co, "block_size", 0);
        t->vhdx_has_log_size = co_get(&co, "log_size") != NULL;
        t->vhdx_log_size = co_get_uint(&co, "log_size", 0);
        t->vhdx_zero_blocks = co_get_bool(&co, "block_state_zero", 1);
        subformat(&co, "fixed", &t->vhdx_fixed, te);
    } else {
        t->fmt = INS_MEASURE_VDI;
        t->vdi_static = co_get_bool(&co, "static", 0);
    }
out:
    co_free(&co);
}

static void print_target_error(const struct options *o,
                               const struct target_error *te)
{
    die_msg(o, "%s", te->err.msg);
    fputs(te->err.hint, stderr);
    if (te->format[0])
        die_msg(o, "Invalid options for file format '%s'", te->format);
}

/* ---- output ---- */

static void print_result(const struct ins_measure_result *r, int json)
{
    if (!json) {
        printf("required size: %" PRIu64 "\n", r->required);
        printf("fully allocated size: %" PRIu64 "\n", r->fully_allocated);
        if (r->has_bitmaps)
            printf("bitmaps size: %" PRIu64 "\n", r->bitmaps);
        return;
    }
    {
        struct tree_builder tb;
        struct tree *d;

        tree_builder_init(&tb, &ins_libc_alloc);
        d = tree_new_dict(&tb);
        /* BlockMeasureInfo's members are QAPI 'int': int64 in the JSON. */
        tree_put_int(&tb, d, "required", (int64_t)r->required);
        tree_put_int(&tb, d, "fully-allocated", (int64_t)r->fully_allocated);
        if (r->has_bitmaps)
            tree_put_int(&tb, d, "bitmaps", (int64_t)r->bitmaps);
        if (!tb.failed) {
            render_json(stdout, d);
            putchar('\n');
        }
        tree_free(&ins_libc_alloc, d);
    }
}

/* ---- the command ---- */

/* qemu-img's cvtnum("image size", ...) for --size. */
static int parse_image_size(const struct options *o, const char *arg,
                            uint64_t *size)
{
    int64_t v = parse_size_arg(o, "image size", arg);

    if (v < 0)
        return -1;
    *size = (uint64_t)v;
    return 0;
}

struct measure_args {
    const char *filename, *format, *out_fmt, *snapshot;
    char *options;
    int json, image_opts, has_size;
    uint64_t size;
    struct co_objects objs;
    /* The last -l snapshot.id=...,snapshot.name=..., which wins over a
     * plain -l as in qemu-img; either may be NULL. */
    int has_sn_opts;
    char *sn_id, *sn_name;
};


enum { OPT_OBJECT = 256, OPT_OUTPUT, OPT_IMAGE_OPTS, OPT_SIZE };


/* getopt as qemu-img's: glibc reports bad options under the command's
 * argv[0] ("measure" in 7.2, "PROGRAM measure" in 10.0).  Returns -1 to
 * go on, or the exit status. */
static int parse_args(struct options *o, int argc, char **argv,
                      struct measure_args *a)
{
    static const struct option longopts_72[] = {
        { "help", no_argument, NULL, 'h' },
        { "image-opts", no_argument, NULL, OPT_IMAGE_OPTS },
        { "object", required_argument, NULL, OPT_OBJECT },
        { "output", required_argument, NULL, OPT_OUTPUT },
        { "size", required_argument, NULL, OPT_SIZE },
        { "force-share", no_argument, NULL, 'U' },
        { NULL, 0, NULL, 0 },
    };
    static const struct option longopts_10[] = {
        { "help", no_argument, NULL, 'h' },
        { "target-format", required_argument, NULL, 'O' },
        { "format", required_argument, NULL, 'f' },
        { "image-opts", no_argument, NULL, OPT_IMAGE_OPTS },
        { "options", required_argument, NULL, 'o' },
        { "snapshot", required_argument, NULL, 'l' },
        { "object", required_argument, NULL, OPT_OBJECT },
        { "output", required_argument, NULL, OPT_OUTPUT },
        { "size", required_argument, NULL, OPT_SIZE },
        { "force-share", no_argument, NULL, 'U' },
        { NULL, 0, NULL, 0 },
    };
    int modern = profile_at_least(&o->prof, 9, 0);
    char *saved = argv[0], name[4200];
    int c, status = -1;

    snprintf(name, sizeof(name), "%s measure", o->argv0);
    if (modern)
        argv[0] = name;
    optind = 0;
    opterr = 1;
    while (status < 0 &&
           (c = getopt_long(argc, argv, "hf:O:o:l:U",
                            modern ? longopts_10 : longopts_72, NULL)) != -1) {
        switch (c) {
        case 'h':
            printf(measure_help, o->progname);
            status = 0;
            break;
        case 'f':
            a->format = optarg;
            break;
        case 'O':
            a->out_fmt = optarg;
            break;
        case 'o':
            if (host_add_options(o, &a->options, optarg) < 0)
                status = 1;
            break;
        case 'l':
            if (host_snapshot_param(o, optarg, &a->snapshot, &a->has_sn_opts,
                                    &a->sn_id, &a->sn_name) < 0)
                status = 1;
            break;
        case 'U':
            break;
        case OPT_OBJECT: {
            struct co_error err;

            if (co_object_add(&a->objs, optarg, &err) < 0) {
                die_msg(o, "%s", err.msg);
                fputs(err.hint, stderr);
                status = 1;
            }
            break;
        }
        case OPT_IMAGE_OPTS:
            a->image_opts = 1;
            break;
        case OPT_OUTPUT:
            if (parse_output_format(o, "measure", optarg, &a->json) < 0)
                status = 1;
            break;
        case OPT_SIZE:
            if (parse_image_size(o, optarg, &a->size) < 0)
                status = 1;
            a->has_size = 1;
            break;
        default:
            /* glibc has said what was wrong.  qemu-img 7.2 then prints its
             * help and succeeds; 10.0 points at --help and fails. */
            if (modern) {
                usage_hint(o, "measure");
                status = 1;
            } else {
                printf(measure_help, o->progname);
                status = 0;
            }
            break;
        }
    }
    argv[0] = saved;
    if (status >= 0)
        return status;

    if (argc - optind > 1) {
        die_msg(o, "At most one filename argument is allowed.");
        return 1;
    }
    if (argc - optind == 1)
        a->filename = argv[optind];
    if (!a->filename && (a->image_opts || a->format || a->snapshot ||
                         a->has_sn_opts)) {
        die_msg(o, "--image-opts, -f, and -l require a filename argument.");
        return 1;
    }
    if (a->filename && a->has_size) {
        die_msg(o, "--size N cannot be used together with a filename.");
        return 1;
    }
    if (!a->filename && !a->has_size) {
        die_msg(o, "Either --size N or one filename must be specified.");
        return 1;
    }
    return -1;
}

/* Opens FILE in a worker and measures it against t.  Returns the exit
 * status; prints errors. */
static int measure_file(struct options *o, const struct measure_args *a,
                        const struct ins_measure_target *t,
                        const struct target_error *te)
{
    struct measure_job job;
    struct ins_measure_source src;
    struct ins_measure_result res;
    struct policy pol;
    struct tree *tree;
    struct job_error jerr;
    char err[1024];
    int fd, opened = 0, rc;

    if (a->image_opts) {
        die_msg(o, "--image-opts is not supported: option strings can name "
                "arbitrary files and protocols; pass a file name");
        return 1;
    }
    if (strncmp(a->filename, "json:", 5) == 0) {
        die_msg(o, "Could not open '%s': json: file names are not supported",
                a->filename);
        return 1;
    }
    if (a->format && !ins_find_driver(a->format)) {
        die_msg(o, "Could not open '%s': Unknown driver '%s'", a->filename,
                a->format);
        return 1;
    }
    fd = host_open_image(o, a->filename, O_RDONLY);
    if (fd < 0)
        return 1;
    if (options_policy(o, &pol, a->filename) < 0) {
        close(fd);
        return 1;
    }
    policy_note_open(&pol, fd);

    memset(&job, 0, sizeof(job));
    job.image.filename = a->filename;
    job.image.format = a->format;
    job.target = *t;
    job.scan = !te->failed;
    job.parallels_bitmaps = profile_at_least(&o->prof, 9, 0);
    job.has_sn_opts = a->has_sn_opts;
    job.sn_id = a->sn_id;
    job.sn_name = a->sn_name;
    job.snapshot = a->snapshot;
    tree = host_run_job(o, &pol, measure_job_run, &job, &fd, 1, note_opened,
                        &opened, &jerr);
    close(fd);
    policy_forget(&pol);
    if (!tree) {
        if (!opened)
            host_report_open_error(o, a->filename, &jerr);
        else
            die_msg(o, "%s", jerr.msg);
        return 1;
    }
    rc = read_source(tree, &src);
    tree_free(&ins_libc_alloc, tree);
    if (te->failed) {
        print_target_error(o, te);
        return 1;
    }
    if (rc < 0) {
        die_msg(o, "the worker's answer was malformed");
        return 1;
    }
    if (ins_measure_compute(t, &src, &res, err, sizeof(err)) < 0) {
        die_msg(o, "%s", err);
        return 1;
    }
    print_result(&res, a->json);
    return 0;
}

int cmd_measure(struct options *o, int argc, char **argv)
{
    struct measure_args a;
    struct ins_measure_target t;
    struct target_error te;
    struct ins_measure_result res;
    char err[1024];
    int status;

    memset(&a, 0, sizeof(a));
    a.out_fmt = "raw";
    status = parse_args(o, argc, argv, &a);
    if (status < 0) {
        build_target(o, a.out_fmt, a.options, a.has_size, a.size, &a.objs,
                     &t, &te);
        if (a.filename) {
            status = measure_file(o, &a, &t, &te);
        } else if (te.failed) {
            print_target_error(o, &te);
            status = 1;
        } else if (ins_measure_compute(&t, NULL, &res, err, sizeof(err)) < 0) {
            die_msg(o, "%s", err);
            status = 1;
        } else {
            print_result(&res, a.json);
            status = 0;
        }
    }
    free(a.options);
    free(a.sn_id);
    free(a.sn_name);
    co_objects_free(&a.objs);
    return status;
}

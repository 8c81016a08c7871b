/*
 * cmd_info.c - `info`: what qemu-img info prints, with the image parsed
 * in the sandboxed worker and every backing file opened through the path
 * policy.
 */
#include <fcntl.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "jobs.h"

static const char info_help[] =
    "Usage: %s info [-f FMT] [--output=human|json] [--backing-chain] [-U] FILE\n"
    "\n"
    "Display information about the disk image FILE, as qemu-img info does.\n"
    "The image is parsed in a sandboxed worker; backing files, data files and\n"
    "extents named inside it are opened only under the allowed directories.\n"
    "\n"
    "  -f, --format=FMT      the image format (default: detect; unknown bytes are\n"
    "                        refused unless they carry an MBR/GPT or -f raw is given)\n"
    "  --output=human|json   output format (default human)\n"
    "  --backing-chain       also show every image of the backing chain\n"
    "  -U, --force-share     accepted for compatibility (instar takes no locks)\n"
    "  --object OBJDEF       accepted for compatibility and ignored\n"
    "  --image-opts          refused: option strings can name arbitrary files\n"
    "\n"
    "instar options (any command):\n"
    "  --qemu-version X.Y    reproduce that qemu-img's output layout (7.2, 10.0, ...)\n"
    "  --allow-path DIR      allow references under DIR too (repeatable)\n"
    "  --max-depth N         longest backing chain (default 16)\n"
    "  --memory-limit SIZE   worker address-space limit (default 1G)\n"
    "  --cpu-limit SECONDS   worker CPU limit (default 60)\n"
    "  --unsafe-quirks       qemu-img's unsafe behaviour (raw fallback, iso as raw)\n"
    "  --ignore-quirks       intuitive sizes instead of qemu-img's rounding\n"
    "  --extra-detail        format details qemu-img does not print\n"
    "  --no-sandbox          DEBUGGING ONLY: parse images without the sandbox\n";

struct info_job {
    struct image_job image;
};

static int info_job_run(struct ins_ctx *ctx, void *opaque, const int *fds,
                        size_t nfds, struct tree_builder *tb,
                        struct tree **out)
{
    struct info_job *job = opaque;
    const struct ins_driver *drv;
    struct ins_bdev bd;
    int rc;

    if (nfds < 1)
        return ins_error(ctx, INS_EINVAL, "no image");
    rc = job_open_driver(ctx, &job->image, fds[0], &bd, &drv);
    if (rc < 0)
        return rc;
    return ins_op_info(ctx, &bd, job->image.filename, drv, 0, tb, out);
}

/* Runs info on one image; returns its tree or NULL after printing the
 * error. */
static struct tree *info_one(struct options *o, struct policy *pol,
                             int fd, const char *filename, const char *format,
                             int declared)
{
    struct info_job job;
    struct job_error err;
    struct tree *t;

    job.image.filename = filename;
    job.image.format = format;
    job.image.format_declared = declared;
    t = host_run_job(o, pol, info_job_run, &job, &fd, 1, NULL, NULL, &err);
    if (!t) {
        host_report_open_error(o, filename, &err);
        return NULL;
    }
    if (t->type != TREE_DICT) {
        die_msg(o, "Could not open '%s': the worker's answer was malformed", filename);
        tree_free(&ins_libc_alloc, t);
        return NULL;
    }
    /* qemu-img before 8.0 had no block graph in its output. */
    if (!profile_at_least(&o->prof, 8, 0))
        tree_free(&ins_libc_alloc, tree_take(t, "children"));
    return t;
}

int cmd_info(struct options *o, int argc, char **argv)
{
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "format", required_argument, NULL, 'f' },
        { "output", required_argument, NULL, 'O' },
        { "backing-chain", no_argument, NULL, 'B' },
        { "object", required_argument, NULL, 'o' },
        { "image-opts", no_argument, NULL, 'I' },
        { "force-share", no_argument, NULL, 'U' },
        { NULL, 0, NULL, 0 },
    };
    const char *format = NULL, *filename;
    int json = 0, chain = 0, c, fd, depth, declared = 0, status = 0;
    struct tree *list[1024];
    size_t n = 0, i;
    struct policy pol;
    char *owned_name = NULL, *owned_fmt = NULL;

    optind = 0;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":f:hU", longopts, NULL)) != -1) {
        switch (c) {
        case 'h':
            printf(info_help, o->progname);
            return 0;
        case 'f':
            format = optarg;
            break;
        case 'O':
            if (parse_output_format(o, "info", optarg, &json) < 0)
                return 1;
            break;
        case 'B':
            chain = 1;
            break;
        case 'o':
        case 'U':
            break;
        case 'I':
            refuse_image_opts(o);
            return 1;
        default:
            return option_error(o, "info", c, argv[optind - 1]);
        }
    }
    fd = host_open_single(o, "info", argc, argv, format, &filename, &pol);
    if (fd < 0)
        return 1;

    for (depth = 0;; depth++) {
        struct tree *t = info_one(o, &pol, fd, filename, format, declared);
        const char *backing;
        char errbuf[1024];
        int err;

        close(fd);
        if (!t) {
            status = 1;
            break;
        }
        list[n++] = t;
        backing = tree_get_str(t, "backing-filename");
        if (!chain || !backing)
            break;
        if (depth + 1 >= pol.max_depth || n >= sizeof(list) / sizeof(list[0])) {
            die_msg(o, "Could not open '%s': backing chain is deeper than the "
                    "limit of %d images (see --max-depth)", backing, pol.max_depth);
            status = 1;
            break;
        }
        fd = policy_open_ref(&pol, "backing file", filename, backing, &err,
                             errbuf, sizeof(errbuf));
        if (fd < 0) {
            die_msg(o, "Could not open '%s': %s", backing, errbuf);
            status = 1;
            break;
        }
        {
            /* filename may be owned_name: combine before freeing it. */
            char *next_name = policy_combine(filename, backing);
            const char *bfmt = tree_get_str(t, "backing-filename-format");
            char *next_fmt = bfmt ? strdup(bfmt) : NULL;

            free(owned_name);
            free(owned_fmt);
            owned_name = next_name;
            owned_fmt = next_fmt;
        }
        filename = owned_name;
        format = owned_fmt;
        declared = 1;
        if (!filename) {
            close(fd);
            status = 1;
            break;
        }
    }

    if (status == 0) {
        if (json && chain) {
            struct tree_builder tb;
            struct tree *arr;

            tree_builder_init(&tb, &ins_libc_alloc);
            arr = tree_new_list(&tb);
            for (i = 0; i < n && arr; i++)
                tree_append(&tb, arr, list[i]);
            if (arr)
                render_info_json(stdout, arr);
            n = 0;
            tree_free(&ins_libc_alloc, arr);
        } else {
            for (i = 0; i < n; i++) {
                if (json) {
                    render_info_json(stdout, list[i]);
                } else {
                    if (i)
                        putchar('\n');
                    render_info_human(stdout, list[i], &o->prof,
                                      (o->ctx_flags & INS_F_IGNORE_QUIRKS) != 0);
                }
            }
        }
    }
    for (i = 0; i < n; i++)
        tree_free(&ins_libc_alloc, list[i]);
    free(owned_name);
    free(owned_fmt);
    policy_forget(&pol);
    return status;
}

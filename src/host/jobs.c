/*
 * jobs.c - opening images: the host opens files and answers reference
 * requests; the worker detects the format and opens the driver.
 */
#include "jobs.h"
#include "createopts.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int host_open_image(const struct options *o, const char *filename, int flags)
{
    struct stat st;
    int fd;

    if (!*filename) {
        die_msg(o, "Could not open '': The 'file' block driver requires a file name");
        return -1;
    }
    fd = open(filename, flags | O_CLOEXEC | O_NOCTTY);

    if (fd < 0) {
        int e = errno;

        die_msg(o, "Could not open '%s': Could not open '%s': %s", filename,
                filename, strerror(e));
        return -1;
    }
    if (fstat(fd, &st) == 0 && S_ISDIR(st.st_mode)) {
        die_msg(o, "Could not open '%s': 'file' driver requires '%s' to be a regular file",
                filename, filename);
        close(fd);
        return -1;
    }
    return fd;
}

int host_open_checked(const struct options *o, const char *filename,
                      const char *format)
{
    if (strncmp(filename, "json:", 5) == 0) {
        die_msg(o, "Could not open '%s': json: file names are not supported "
                "(they can name arbitrary files and protocols)", filename);
        return -1;
    }
    if (format && !ins_find_driver(format)) {
        die_msg(o, "Could not open '%s': Unknown driver '%s'", filename, format);
        return -1;
    }
    return host_open_image(o, filename, O_RDONLY);
}

int host_open_single(const struct options *o, const char *cmd, int argc,
                     char **argv, const char *format, const char **filename,
                     struct policy *pol)
{
    int fd;

    if (optind != argc - 1) {
        die_msg(o, "Expecting one image file name");
        usage_hint(o, cmd);
        return -1;
    }
    *filename = argv[optind];
    fd = host_open_checked(o, *filename, format);
    if (fd < 0)
        return -1;
    if (options_policy(o, pol, *filename) < 0) {
        close(fd);
        return -1;
    }
    policy_note_open(pol, fd);
    return fd;
}

void refuse_image_opts(const struct options *o)
{
    die_msg(o, "--image-opts is not supported: option strings can name "
            "arbitrary files and protocols; pass a file name");
}

static const char *ref_what(enum ins_ref_kind kind)
{
    switch (kind) {
    case INS_REF_BACKING: return "backing file";
    case INS_REF_DATA_FILE: return "data file";
    case INS_REF_EXTENT: return "extent file";
    case INS_REF_PARENT: return "parent image";
    }
    return "reference";
}

int host_ref_open(void *opaque, const struct worker_ref_request *req, int *err,
                  char *errbuf, size_t errlen)
{
    struct ref_state *rs = opaque;

    if (req->kind == INS_REF_BACKING || req->kind == INS_REF_PARENT) {
        /* The chain includes the image itself. */
        if (++rs->links >= rs->policy->max_depth) {
            *err = INS_EREFUSED;
            snprintf(errbuf, errlen, "%s '%s' refused: backing chain is deeper "
                     "than the limit of %d images (see --max-depth)",
                     ref_what(req->kind), req->name, rs->policy->max_depth);
            return -1;
        }
    }
    return policy_open_ref(rs->policy, ref_what(req->kind), req->base,
                           req->name, err, errbuf, errlen);
}

int job_open_driver(struct ins_ctx *ctx, const struct image_job *job,
                    int fd, struct ins_bdev *bd,
                    const struct ins_driver **drv)
{
    int rc = worker_bdev_init(bd, fd, job->filename);

    if (rc < 0)
        return ins_error(ctx, rc, "Could not read '%s'", job->filename);
    return ins_select_driver(ctx, bd, job->format, job->format_declared, drv);
}

int job_open_image(struct ins_ctx *ctx, const struct image_job *job, int fd,
                   struct ins_image **img)
{
    struct ins_bdev *bd = ins_malloc(ctx, sizeof(*bd));
    const struct ins_driver *drv;
    int rc;

    if (!bd)
        return ins_error(ctx, INS_ENOMEM, "Out of memory");
    rc = job_open_driver(ctx, job, fd, bd, &drv);
    if (rc < 0)
        return rc;
    return ins_image_open(ctx, bd, drv, 0, 1, img);
}

int job_open_image_announced(struct ins_ctx *ctx, const struct image_job *job,
                             int fd, struct tree_builder *tb,
                             struct ins_image **img)
{
    struct tree *opened;
    int rc = job_open_image(ctx, job, fd, img);

    if (rc < 0)
        return rc;
    opened = tree_new_dict(tb);
    tree_put_bool(tb, opened, "opened", 1);
    rc = tb->failed || !ctx->emit ? INS_ENOMEM : ctx->emit(ctx, opened);
    tree_free(tb->alloc, opened);
    if (rc < 0)
        return ins_error(ctx, INS_ENOMEM, "Out of memory");
    return INS_OK;
}

struct tree *host_run_job(struct options *o, struct policy *pol,
                          worker_job_fn fn, void *job, const int *fds,
                          size_t nfds, worker_partial_fn partial,
                          void *partial_opaque, struct job_error *err)
{
    struct ref_state rs = { o, pol, 0 };
    struct worker_hooks hooks = { host_ref_open, &rs, partial, partial_opaque };
    struct worker_result res;

    memset(err, 0, sizeof(*err));
    if (worker_run(&o->lim, o->ctx_flags, fn, job, fds, nfds, &hooks, &res) < 0) {
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

void host_report_open_error(const struct options *o, const char *filename,
                            const struct job_error *err)
{
    if (err->plain)
        die_msg(o, "%s", err->msg);
    else
        die_msg(o, "Could not open '%s': %s", filename, err->msg);
}

static int dup_opt(const struct co_opts *co, const char *key, char **out)
{
    const char *v = co_get_str(co, key);

    free(*out);
    *out = v ? strdup(v) : NULL;
    return v && !*out ? -1 : 0;
}

int host_snapshot_param(const struct options *o, const char *arg,
                        const char **snapshot, int *has_sn_opts,
                        char **sn_id, char **sn_name)
{
    struct co_opts co;
    struct co_error err;
    int rc;

    if (strncmp(arg, "snapshot.", 9) != 0) {
        *snapshot = arg;
        return 0;
    }
    co_init(&co, &co_snapshot_format, o->prof.major);
    rc = co_parse(&co, arg, &err);
    if (rc < 0) {
        co_free(&co);
        die_msg(o, "%s", err.msg);
        fputs(err.hint, stderr);
        die_msg(o, "Failed in parsing snapshot param '%s'", arg);
        return -1;
    }
    *has_sn_opts = 1;
    rc = dup_opt(&co, "snapshot.id", sn_id) < 0 ||
         dup_opt(&co, "snapshot.name", sn_name) < 0;
    co_free(&co);
    if (rc) {
        die_msg(o, "Out of memory");
        return -1;
    }
    return 0;
}

int host_add_options(const struct options *o, char **all, const char *arg)
{
    char *n;

    if (co_valid_list(arg) < 0) {
        die_msg(o, "Invalid option list: %s", arg);
        return -1;
    }
    if (!*all) {
        n = strdup(arg);
    } else {
        n = malloc(strlen(*all) + strlen(arg) + 2);
        if (n)
            sprintf(n, "%s,%s", *all, arg);
    }
    if (!n) {
        die_msg(o, "Out of memory");
        return -1;
    }
    free(*all);
    *all = n;
    return 0;
}

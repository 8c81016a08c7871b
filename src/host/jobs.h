/*
 * jobs.h - engine jobs the host runs in a worker, and the host's side of
 * opening images for them.
 */
#ifndef INSTAR_JOBS_H
#define INSTAR_JOBS_H

#include "options.h"

/* An image to open in the worker: fds[0] in the job's descriptor list. */
struct image_job {
    const char *filename;       /* as named on the command line or in a chain */
    const char *format;         /* -f, or a format declared by a parent image */
    int format_declared;        /* format came from an image, not the user */
};

/* Opens the command-line image read-only; prints qemu's error and returns
 * -1 on failure. */
int host_open_image(const struct options *o, const char *filename, int flags);

/* The same, after refusing json: names and unknown -f formats. */
int host_open_checked(const struct options *o, const char *filename,
                      const char *format);

/*
 * For commands taking one image after their options (argv[optind]):
 * checks there is exactly one, opens it (host_open_checked) and sets up
 * the path policy for it.  Returns the descriptor, or -1 after printing
 * the error.
 */
int host_open_single(const struct options *o, const char *cmd, int argc,
                     char **argv, const char *format, const char **filename,
                     struct policy *pol);

/* Appends one -o argument to *all the way qemu-img's accumulate_options()
 * does.  Returns 0, or -1 after printing qemu's error. */
int host_add_options(const struct options *o, char **all, const char *arg);

/*
 * -l of convert and measure: "snapshot.id=...,snapshot.name=..." is parsed
 * as qemu-img parses it (*has_sn_opts set, *sn_id / *sn_name replaced with
 * copies, either may be NULL); any other argument is an id or name
 * (*snapshot).  Returns 0, or -1 after printing qemu's error.
 */
int host_snapshot_param(const struct options *o, const char *arg,
                        const char **snapshot, int *has_sn_opts,
                        char **sn_id, char **sn_name);

/* --image-opts is refused: its option strings can name any file. */
void refuse_image_opts(const struct options *o);

/* The engine-side open: bdev over fds[0], format from job or detection. */
int job_open_driver(struct ins_ctx *ctx, const struct image_job *job,
                    int fd, struct ins_bdev *bd,
                    const struct ins_driver **drv);

/* In the worker: opens the job's image for reading, with its backing
 * chain (each link through the host's policy). */
int job_open_image(struct ins_ctx *ctx, const struct image_job *job, int fd,
                   struct ins_image **img);

/* Why a job failed. */
struct job_error {
    int status;                 /* INS_E* */
    int plain;                  /* print msg as it is, without "Could not open" */
    char msg[1100];
};

/* The same, then tells the host the image opened (a partial {"opened":
 * true}): errors after it are not "Could not open" errors. */
int job_open_image_announced(struct ins_ctx *ctx, const struct image_job *job,
                             int fd, struct tree_builder *tb,
                             struct ins_image **img);

/* Runs a job in a worker with the usual hooks; returns the worker's result
 * tree, or NULL with *err filled. */
struct tree *host_run_job(struct options *o, struct policy *pol,
                          worker_job_fn fn, void *job, const int *fds,
                          size_t nfds, worker_partial_fn partial,
                          void *partial_opaque, struct job_error *err);

/* Prints a job's error as qemu-img does: "Could not open 'FILE': MSG",
 * or MSG alone when the engine said it is complete. */
void host_report_open_error(const struct options *o, const char *filename,
                            const struct job_error *err);

/* State for answering a worker's reference requests through the policy. */
struct ref_state {
    const struct options *opts;
    struct policy *policy;
    int links;                  /* backing/parent files opened so far */
};
int host_ref_open(void *opaque, const struct worker_ref_request *req, int *err,
                  char *errbuf, size_t errlen);

int cmd_info(struct options *o, int argc, char **argv);
int cmd_map(struct options *o, int argc, char **argv);
int cmd_compare(struct options *o, int argc, char **argv);
int cmd_check(struct options *o, int argc, char **argv);      /* cmd_check.c */
int cmd_inspect(struct options *o, int argc, char **argv);    /* cmd_inspect.c */
int cmd_convert(struct options *o, int argc, char **argv);    /* cmd_convert.c */
int cmd_dd(struct options *o, int argc, char **argv);         /* cmd_dd.c */

#endif

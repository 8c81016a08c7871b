/*
 * worker.h - the sandboxed worker process.
 *
 * The host never reads image bytes.  For every job it forks a worker that
 * keeps only the file descriptors the host hands it plus one channel
 * socket, drops into resource limits, no-new-privs and a seccomp
 * allow-list (no open, exec, socket, ...), and runs an engine operation.
 *
 * While the job runs the worker may ask the host to open a file named
 * inside an image (OpenSSH's monitor model): the host applies its path
 * policy and either passes a read-only descriptor over the channel or
 * refuses.  The job ends with one result message: a value tree or an
 * error.  The host bounds and validates everything it receives.
 */
#ifndef INSTAR_WORKER_H
#define INSTAR_WORKER_H

#include <stddef.h>
#include <stdint.h>

#include "../engine/engine.h"

/* Limits applied to the worker. */
struct worker_limits {
    uint64_t memory_bytes;      /* RLIMIT_AS; 0 = unlimited */
    uint64_t cpu_seconds;       /* RLIMIT_CPU; 0 = unlimited */
    uint64_t output_bytes;      /* largest result the host accepts */
    int no_sandbox;             /* debugging only: no seccomp, no limits */
    int test_escape;            /* test hook: the worker tries open() */
    uint64_t test_kill_after_writes; /* test hook: SIGKILL before write N+1 */
};

/* Host-side answer to a worker's request to open a referenced file. */
struct worker_ref_request {
    enum ins_ref_kind kind;
    const char *base;           /* image holding the reference */
    const char *name;           /* reference as stored in the image */
};

/*
 * Called in the host for each reference; returns an open read-only fd, or
 * -1 with a one-line reason in errbuf and *err set to INS_EREFUSED or
 * INS_ENOENT.
 */
typedef int (*worker_ref_fn)(void *opaque, const struct worker_ref_request *req,
                             int *err, char *errbuf, size_t errlen);

/* What a job does inside the worker.  fds[] are the job's descriptors as
 * renumbered in the worker.  Returns INS_OK with *out set, or INS_E*. */
typedef int (*worker_job_fn)(struct ins_ctx *ctx, void *job, const int *fds,
                             size_t nfds, struct tree_builder *tb,
                             struct tree **out);

/* Called in the host for each partial result the job emits (decoded and
 * bounded); a non-zero return stops the job. */
typedef int (*worker_partial_fn)(void *opaque, const struct tree *part);

struct worker_hooks {
    worker_ref_fn ref;              /* NULL: references refused */
    void *ref_opaque;
    worker_partial_fn partial;      /* NULL: partial results refused */
    void *partial_opaque;
};

struct worker_result {
    int status;                 /* INS_OK, or INS_E* */
    char errmsg[1024];          /* one line when status != INS_OK */
    int errmsg_plain;           /* print errmsg without "Could not open" */
    struct tree *tree;          /* decoded result (host's libc allocator) */
    int sandbox_failure;        /* the worker died rather than answered */
};

/*
 * Runs fn(job) in a fresh sandboxed worker holding fds[0..nfds-1].
 * ctx_flags becomes ctx->flags.  Returns 0 when the worker answered (see
 * res->status), -1 when it did not (res->errmsg says why: a limit, the
 * sandbox filter, a crash).
 */
int worker_run(const struct worker_limits *lim, unsigned ctx_flags,
               worker_job_fn fn, void *job, const int *fds, size_t nfds,
               const struct worker_hooks *hooks, struct worker_result *res);

/* Inside the worker: a block device over an inherited descriptor. */
int worker_bdev_init(struct ins_bdev *bd, int fd, const char *name);

#endif

/*
 * options.h - settings shared by every command: the qemu-img profile,
 * quirk modes, sandbox limits and path policy, from the command line, the
 * environment and the config file.
 */
#ifndef INSTAR_OPTIONS_H
#define INSTAR_OPTIONS_H

#include <stdio.h>

#include "../worker/worker.h"
#include "policy.h"
#include "render.h"

#define INSTAR_VERSION "0.1.0"

struct options {
    const char *progname;       /* "qemu-img" or "instar": message prefix */
    const char *argv0;          /* as invoked (qemu 10 quotes it in hints) */
    int as_qemu_img;            /* invoked through a link named qemu-img */
    struct profile prof;
    unsigned ctx_flags;         /* INS_F_* */
    struct worker_limits lim;
    int cpu_limit_set;          /* --cpu-limit or the config file chose it */
    int max_depth;
    char *allow_paths[POLICY_MAX_DIRS];     /* owned */
    size_t n_allow_paths;
};

/*
 * Removes instar's own options from argv (wherever they appear before a
 * "--"), applying them over the environment and config file.  Returns the
 * new argc, or -1 after printing an error.
 */
int options_parse(struct options *o, int argc, char **argv);

/* Frees what options_parse allocated. */
void options_free(struct options *o);

/* Prints "PROG: message" to stderr (one line). */
void die_msg(const struct options *o, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* The "Try ... for more information" hint after a usage error. */
void usage_hint(const struct options *o, const char *command);

/*
 * Reports a getopt_long failure (c is ':' or '?') for command cmd the way
 * the profile's qemu-img does; returns 1 (the exit status).
 */
int option_error(const struct options *o, const char *cmd, int c,
                 const char *arg);

/* Parses --output's value; prints the profile's error and returns -1. */
int parse_output_format(const struct options *o, const char *cmd,
                        const char *arg, int *json);

/* qemu's cvtnum(): a size with optional suffix (k, M, G, T, P, E),
 * hexadecimal, or a fraction with a suffix.  Prints qemu's error and
 * returns -1 when invalid. */
int64_t parse_size_arg(const struct options *o, const char *what,
                       const char *value);

/* Sets up a policy for a command whose main image is `image`. */
int options_policy(const struct options *o, struct policy *p, const char *image);

#endif

/*
 * policy.h - which files named inside an image the host may open.
 *
 * A reference (backing file, data file, vmdk extent, parent locator) is
 * opened only when: it is not a json: or protocol name; after resolving
 * symlinks and '..' it lies under an allowed directory (by default the
 * directory of the image named on the command line); the chain is no
 * deeper than the limit; and it does not loop back to a file already in
 * use.  The open itself is race-free (openat2 RESOLVE_BENEATH from the
 * allowed directory).
 */
#ifndef INSTAR_POLICY_H
#define INSTAR_POLICY_H

#include <stddef.h>
#include <sys/types.h>

#define POLICY_MAX_DIRS 64
#define POLICY_MAX_SEEN 256

struct policy {
    char *dirs[POLICY_MAX_DIRS];    /* resolved allowed directories */
    size_t n_dirs;
    int max_depth;
    /* Files opened so far in this chain, to detect loops. */
    dev_t seen_dev[POLICY_MAX_SEEN];
    ino_t seen_ino[POLICY_MAX_SEEN];
    size_t n_seen;
};

void policy_init(struct policy *p, int max_depth);
/* Adds an allowed directory (resolved now); -1 if it does not exist. */
int policy_allow_dir(struct policy *p, const char *dir);
/* Allows the directory holding `image` (the command-line image). */
int policy_allow_image_dir(struct policy *p, const char *image);
/* Records an open file for loop detection; -1 if it was seen already. */
int policy_note_open(struct policy *p, int fd);
/* Starts loop detection afresh: the files opened next form another chain
 * (another source, or a new image's backing chain). */
void policy_new_chain(struct policy *p);
void policy_forget(struct policy *p);

/*
 * Resolves `name` (as stored in the image `base`) and opens it read-only
 * if the policy allows.  what names the kind of reference for messages
 * ("backing file", "data file", "extent").  On refusal returns -1 with
 * *err = INS_EREFUSED or INS_ENOENT and a one-line message in errbuf.
 */
int policy_open_ref(struct policy *p, const char *what, const char *base,
                    const char *name, int *err, char *errbuf, size_t errlen);

/* The qemu-style combination of base's directory and name. */
char *policy_combine(const char *base, const char *name);

#endif

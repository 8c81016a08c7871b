/*
 * targets.h - files a new image needs besides its own (vmdk extents).
 *
 * The worker cannot create files, so the host creates every file of a
 * new image before the job starts and hands them over as descriptors;
 * the writer receives them in ins_create.extra, named as the descriptor
 * must name them.
 */
#ifndef INSTAR_TARGETS_H
#define INSTAR_TARGETS_H

#include <stddef.h>
#include <stdint.h>

#include "../common/tree.h"

/*
 * For a new image of format fmt named target with options opts (the
 * dict the writer gets) and size bytes: the names of the further files to
 * create, relative to target's directory exactly as the descriptor will
 * store them, in order.  Returns 0 with *names (malloc'd array of
 * malloc'd strings, *n of them; free with targets_free), or -1 with a
 * one-line message in err.
 */
int target_extra_files(const char *fmt, const struct tree *opts,
                       const char *target, uint64_t size, char ***names,
                       size_t *n, char *err, size_t errlen);
void targets_free(char **names, size_t n);

/* Whether target_extra_files() needs the real size for these options
 * (vmdk monolithicFlat and twoGbMaxExtent*: one extent per 2 GiB, none
 * for an empty image); 0 means any size gives the same answer. */
int target_needs_size(const char *fmt, const struct tree *opts);

#endif

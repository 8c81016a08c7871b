/*
 * targets.c - files a new image needs besides its own (being written:
 * vmdk's monolithicFlat and twoGbMaxExtent* extents).
 */
#include <stdlib.h>

#include "targets.h"

int target_extra_files(const char *fmt, const struct tree *opts,
                       const char *target, uint64_t size, char ***names,
                       size_t *n, char *err, size_t errlen)
{
    (void)fmt;
    (void)opts;
    (void)target;
    (void)size;
    (void)err;
    (void)errlen;
    *names = NULL;
    *n = 0;
    return 0;
}

void targets_free(char **names, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
}

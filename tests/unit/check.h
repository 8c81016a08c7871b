/* check.h - a minimal assertion harness for the C unit tests. */
#ifndef INSTAR_UNIT_CHECK_H
#define INSTAR_UNIT_CHECK_H

#include <stdio.h>
#include <string.h>

static int check_failures, check_passes;

#define CHECK(cond) do { \
    if (cond) check_passes++; \
    else { check_failures++; fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); } \
} while (0)

#define CHECK_STR(got, want) do { \
    const char *g_ = (got), *w_ = (want); \
    if (g_ && w_ && strcmp(g_, w_) == 0) check_passes++; \
    else { check_failures++; fprintf(stderr, "%s:%d: got '%s', want '%s'\n", __FILE__, __LINE__, g_ ? g_ : "(null)", w_); } \
} while (0)

/* The plain closing line CI reads: "N passed, N failed". */
static inline int check_report(const char *name)
{
    printf("%s: %d passed, %d failed\n", name, check_passes, check_failures);
    return check_failures ? 1 : 0;
}

#endif

/*
 * targets.c - files a new image needs besides its own: vmdk's
 * monolithicFlat extent (NAME-flat.EXT) and twoGbMaxExtent* extents
 * (NAME-s001.EXT, NAME-f001.EXT, ... one per 2 GiB), named as qemu's
 * vmdk_co_create_opts_cb() names them.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "targets.h"

#define SPLIT_SIZE 0x80000000ull

static const char *opt_str(const struct tree *opts, const char *name)
{
    return opts ? tree_get_str(opts, name) : NULL;
}

static int opt_on(const struct tree *opts, const char *name)
{
    struct tree *t = opts ? tree_get(opts, name) : NULL;

    if (!t)
        return 0;
    if (t->type == TREE_BOOL)
        return t->v.b;
    if (t->type == TREE_STR)
        return strcmp(t->v.str.s, "on") == 0;
    return 0;
}

/*
 * Would the vmdk create get as far as creating extents?  The writer
 * reports the error of a create that fails earlier; no extent files must
 * exist then (qemu creates none).
 */
static int vmdk_creates_extents(const struct tree *opts)
{
    static const char *const adapters[] = { "ide", "buslogic", "lsilogic",
                                            "legacyESX" };
    const char *s;
    const char *hw = opt_str(opts, "hwversion");
    int ok = 0;

    s = opt_str(opts, "backing_fmt");
    if (s && strcmp(s, "vmdk") != 0)
        return 0;
    s = opt_str(opts, "adapter_type");
    if (s) {
        for (size_t i = 0; i < 4; i++)
            ok |= strcmp(s, adapters[i]) == 0;
        if (!ok)
            return 0;
    }
    if (opt_on(opts, "compat6") && hw && strcmp(hw, "undefined") != 0)
        return 0;
    if (opt_str(opts, "backing_file") || opt_on(opts, "zeroed_grain"))
        return 0;           /* flat images refuse both */
    s = opt_str(opts, "preallocation");
    if (s && strcmp(s, "off") != 0 && strcmp(s, "falloc") != 0 &&
        strcmp(s, "full") != 0)
        return 0;           /* creating the descriptor file fails */
    return 1;
}

int target_extra_files(const char *fmt, const struct tree *opts,
                       const char *target, uint64_t size, char ***names,
                       size_t *n, char *err, size_t errlen)
{
    const char *sub, *p, *dot;
    char dirpart[4096], prefix[4096], postfix[4096];
    uint64_t count;
    int split, flat;

    *names = NULL;
    *n = 0;
    if (strcmp(fmt, "vmdk") != 0)
        return 0;
    sub = opt_str(opts, "subformat");
    if (!sub)
        return 0;
    split = strcmp(sub, "twoGbMaxExtentSparse") == 0 ||
            strcmp(sub, "twoGbMaxExtentFlat") == 0;
    flat = strcmp(sub, "monolithicFlat") == 0 ||
           strcmp(sub, "twoGbMaxExtentFlat") == 0;
    if (!split && !flat)
        return 0;
    if (!vmdk_creates_extents(opts))
        return 0;
    if (!flat && opt_str(opts, "backing_file"))
        return 0;

    /*
     * qemu splits the name at the last '/', else '\\', else ':', then at
     * the last '.'.  Names are relative to the '/' directory: a '\\' or
     * ':' directory part stays in the name.
     */
    size = (size + 511) & ~511ull;
    p = strrchr(target, '/');
    p = p ? p + 1 : target;
    {
        const char *q = NULL;

        if (p == target) {
            q = strrchr(p, '\\');
            if (!q)
                q = strrchr(p, ':');
        }

        if (q) {
            snprintf(dirpart, sizeof(dirpart), "%.*s", (int)(q + 1 - p), p);
            p = q + 1;
        } else {
            dirpart[0] = 0;
        }
    }
    dot = strrchr(p, '.');
    if (dot) {
        snprintf(prefix, sizeof(prefix), "%.*s", (int)(dot - p), p);
        snprintf(postfix, sizeof(postfix), "%s", dot);
    } else {
        snprintf(prefix, sizeof(prefix), "%s", p);
        postfix[0] = 0;
    }

    count = split ? (size + SPLIT_SIZE - 1) / SPLIT_SIZE : (size ? 1 : 0);
    if (count > 1000) {
        snprintf(err, errlen, "vmdk %s images of more than 1000 extents "
                 "are not supported", sub);
        return -1;
    }
    if (!count)
        return 0;
    *names = calloc((size_t)count, sizeof(char *));
    if (!*names) {
        snprintf(err, errlen, "Cannot allocate memory");
        return -1;
    }
    for (uint64_t i = 0; i < count; i++) {
        char buf[16384];

        if (split)
            snprintf(buf, sizeof(buf), "%s%s-%c%03d%s", dirpart, prefix,
                     flat ? 'f' : 's', (int)(i + 1), postfix);
        else
            snprintf(buf, sizeof(buf), "%s%s-flat%s", dirpart, prefix,
                     postfix);
        (*names)[i] = strdup(buf);
        if (!(*names)[i]) {
            targets_free(*names, (size_t)i);
            *names = NULL;
            snprintf(err, errlen, "Cannot allocate memory");
            return -1;
        }
    }
    *n = (size_t)count;
    return 0;
}

void targets_free(char **names, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
}

int target_needs_size(const char *fmt, const struct tree *opts)
{
    const char *sub = opt_str(opts, "subformat");

    return strcmp(fmt, "vmdk") == 0 && sub &&
           (strcmp(sub, "monolithicFlat") == 0 ||
            strcmp(sub, "twoGbMaxExtentSparse") == 0 ||
            strcmp(sub, "twoGbMaxExtentFlat") == 0);
}

/*
 * render.h - qemu-img's output formats, rendered from value trees.
 */
#ifndef INSTAR_RENDER_H
#define INSTAR_RENDER_H

#include <stdint.h>
#include <stdio.h>

#include "../common/tree.h"

/* Which qemu-img's layout to reproduce. */
struct profile {
    int major, minor;
};

static inline int profile_at_least(const struct profile *p, int major, int minor)
{
    return p->major > major || (p->major == major && p->minor >= minor);
}

/* qemu's size_to_str(): "%0.3g" with binary suffixes ("1 GiB", "0 B").
 * ignore_quirks: one decimal, no banker's ties ("192.5 KiB"). */
void render_size(char *buf, size_t len, uint64_t size, int ignore_quirks);

/* qemu's qobject_to_json_pretty(), members in QDict hash order. */
void render_json(FILE *out, const struct tree *t);

/* qemu's hash bucket for a QDict key (exposed for tests). */
unsigned render_qdict_bucket(const char *key);

/* `qemu-img info` human output for one image (an ImageInfo tree). */
void render_info_human(FILE *out, const struct tree *info,
                       const struct profile *prof, int ignore_quirks);

/* `qemu-img info` JSON for one image or a list (--backing-chain). */
void render_info_json(FILE *out, const struct tree *info);

#endif

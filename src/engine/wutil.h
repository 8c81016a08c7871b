/*
 * wutil.h - small helpers shared by the image writers (vmdk, vpc, vhdx,
 * vdi): typed lookups in the create options dict and byte-order stores.
 */
#ifndef INSTAR_WUTIL_H
#define INSTAR_WUTIL_H

#include <string.h>

#include "writer.h"

/* The option's string value, or NULL when absent. */
static inline const char *wopt_str(const struct tree *opts, const char *name)
{
    return opts ? tree_get_str(opts, name) : NULL;
}

/* A flag: BOOL as given, or "on"/"off"-style strings; def when absent. */
static inline int wopt_bool(const struct tree *opts, const char *name, int def)
{
    struct tree *t = opts ? tree_get(opts, name) : NULL;

    if (!t)
        return def;
    if (t->type == TREE_BOOL)
        return t->v.b != 0;
    if (t->type == TREE_STR)
        return strcmp(t->v.str.s, "on") == 0 || strcmp(t->v.str.s, "yes") == 0 ||
               strcmp(t->v.str.s, "true") == 0;
    if (t->type == TREE_UINT)
        return t->v.u != 0;
    if (t->type == TREE_INT)
        return t->v.i != 0;
    return def;
}

/* A number or size; def when absent. */
static inline uint64_t wopt_uint(const struct tree *opts, const char *name,
                                 uint64_t def)
{
    struct tree *t = opts ? tree_get(opts, name) : NULL;

    if (!t)
        return def;
    if (t->type == TREE_UINT)
        return t->v.u;
    if (t->type == TREE_INT && t->v.i >= 0)
        return (uint64_t)t->v.i;
    return def;
}

static inline int wopt_has(const struct tree *opts, const char *name)
{
    return opts && tree_get(opts, name) != NULL;
}

static inline void w_be16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}
static inline void w_be32(uint8_t *p, uint32_t v)
{
    w_be16(p, (uint16_t)(v >> 16));
    w_be16(p + 2, (uint16_t)v);
}
static inline void w_be64(uint8_t *p, uint64_t v)
{
    w_be32(p, (uint32_t)(v >> 32));
    w_be32(p + 4, (uint32_t)v);
}
static inline void w_le16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}
static inline void w_le32(uint8_t *p, uint32_t v)
{
    w_le16(p, (uint16_t)v);
    w_le16(p + 2, (uint16_t)(v >> 16));
}
static inline void w_le64(uint8_t *p, uint64_t v)
{
    w_le32(p, (uint32_t)v);
    w_le32(p + 4, (uint32_t)(v >> 32));
}

/*
 * The file protocol's preallocation option, which qemu checks when it
 * creates the image file (before or after the format's own checks,
 * depending on the format): off, falloc and full leave the same image
 * once the format has laid it out.
 */
static inline int w_check_file_prealloc(struct ins_ctx *ctx,
                                        const struct tree *opts)
{
    const char *p = wopt_str(opts, "preallocation");

    if (!p || strcmp(p, "off") == 0 || strcmp(p, "falloc") == 0 ||
        strcmp(p, "full") == 0)
        return INS_OK;
    if (strcmp(p, "metadata") == 0)
        return ins_error(ctx, INS_ENOTSUP,
                         "Unsupported preallocation mode: metadata");
    return ins_error(ctx, INS_EINVAL, "invalid parameter value: %s", p);
}

/* A random version-4 UUID from 16 random bytes (as qemu_uuid_generate). */
static inline void w_uuid(uint8_t out[16], const uint8_t *rnd)
{
    memcpy(out, rnd, 16);
    out[6] = (uint8_t)((out[6] & 0x0f) | 0x40);
    out[8] = (uint8_t)((out[8] & 0x3f) | 0x80);
}

#endif

/*
 * tree.c - value tree: building, lookup, wire encoding and bounded decoding.
 */
#include "tree.h"

#include <stdlib.h>
#include <string.h>

static void *libc_alloc(void *opaque, size_t size)
{
    (void)opaque;
    return malloc(size ? size : 1);
}

static void *libc_realloc(void *opaque, void *ptr, size_t size)
{
    (void)opaque;
    return realloc(ptr, size ? size : 1);
}

static void libc_free(void *opaque, void *ptr)
{
    (void)opaque;
    free(ptr);
}

struct ins_alloc ins_libc_alloc = { NULL, libc_alloc, libc_realloc, libc_free };

void tree_builder_init(struct tree_builder *tb, struct ins_alloc *alloc)
{
    tb->alloc = alloc;
    tb->failed = 0;
    tb->bytes = 0;
    tb->max_bytes = 0;
}

static void *tb_alloc(struct tree_builder *tb, size_t size)
{
    void *p;

    if (tb->failed)
        return NULL;
    if (tb->max_bytes && (size > tb->max_bytes ||
                          tb->bytes > tb->max_bytes - size)) {
        tb->failed = 1;
        return NULL;
    }
    p = tb->alloc->alloc(tb->alloc->opaque, size);
    if (!p) {
        tb->failed = 1;
        return NULL;
    }
    tb->bytes += size;
    return p;
}

static struct tree *new_node(struct tree_builder *tb, enum tree_type type)
{
    struct tree *t = tb_alloc(tb, sizeof(*t));

    if (!t)
        return NULL;
    memset(t, 0, sizeof(*t));
    t->type = type;
    return t;
}

struct tree *tree_new_dict(struct tree_builder *tb)
{
    return new_node(tb, TREE_DICT);
}

struct tree *tree_new_list(struct tree_builder *tb)
{
    return new_node(tb, TREE_LIST);
}

static char *dup_bytes(struct tree_builder *tb, const char *s, size_t len)
{
    char *copy;

    if (len == SIZE_MAX) {
        tb->failed = 1;
        return NULL;
    }
    copy = tb_alloc(tb, len + 1);
    if (!copy)
        return NULL;
    memcpy(copy, s, len);
    copy[len] = '\0';
    return copy;
}

struct tree *tree_new_strn(struct tree_builder *tb, const char *s, size_t len)
{
    struct tree *t;

    if (!s) {
        tb->failed = 1;
        return NULL;
    }
    t = new_node(tb, TREE_STR);
    if (!t)
        return NULL;
    t->v.str.s = dup_bytes(tb, s, len);
    if (!t->v.str.s) {
        tree_free(tb->alloc, t);
        return NULL;
    }
    /* A C string ends at its first NUL; keep the length consistent. */
    t->v.str.len = strlen(t->v.str.s);
    return t;
}

struct tree *tree_new_blob(struct tree_builder *tb, const void *data, size_t len)
{
    struct tree *t = new_node(tb, TREE_BLOB);

    if (!t)
        return NULL;
    t->v.str.s = dup_bytes(tb, data, len);
    if (!t->v.str.s) {
        tree_free(tb->alloc, t);
        return NULL;
    }
    t->v.str.len = len;
    return t;
}

struct tree *tree_new_str(struct tree_builder *tb, const char *s)
{
    return tree_new_strn(tb, s, s ? strlen(s) : 0);
}

struct tree *tree_new_int(struct tree_builder *tb, int64_t i)
{
    struct tree *t = new_node(tb, TREE_INT);

    if (t)
        t->v.i = i;
    return t;
}

struct tree *tree_new_uint(struct tree_builder *tb, uint64_t u)
{
    struct tree *t = new_node(tb, TREE_UINT);

    if (t)
        t->v.u = u;
    return t;
}

struct tree *tree_new_bool(struct tree_builder *tb, int b)
{
    struct tree *t = new_node(tb, TREE_BOOL);

    if (t)
        t->v.b = b ? 1 : 0;
    return t;
}

static void link_child(struct tree *parent, struct tree *value)
{
    value->next = NULL;
    if (parent->v.kids.last)
        parent->v.kids.last->next = value;
    else
        parent->v.kids.first = value;
    parent->v.kids.last = value;
    parent->v.kids.count++;
}

struct tree *tree_put(struct tree_builder *tb, struct tree *dict,
                      const char *key, struct tree *value)
{
    /* A value that cannot be attached belongs to nobody: free it. */
    if (tb->failed || !dict || !value || !key || dict->type != TREE_DICT) {
        tree_free(tb->alloc, value);
        return NULL;
    }
    value->key = dup_bytes(tb, key, strlen(key));
    if (!value->key) {
        tree_free(tb->alloc, value);
        return NULL;
    }
    link_child(dict, value);
    return value;
}

struct tree *tree_append(struct tree_builder *tb, struct tree *list,
                         struct tree *value)
{
    if (tb->failed || !list || !value || list->type != TREE_LIST) {
        tree_free(tb->alloc, value);
        return NULL;
    }
    link_child(list, value);
    return value;
}

struct tree *tree_put_str(struct tree_builder *tb, struct tree *d,
                          const char *key, const char *s)
{
    return tree_put(tb, d, key, tree_new_str(tb, s));
}

struct tree *tree_put_int(struct tree_builder *tb, struct tree *d,
                          const char *key, int64_t i)
{
    return tree_put(tb, d, key, tree_new_int(tb, i));
}

struct tree *tree_put_uint(struct tree_builder *tb, struct tree *d,
                           const char *key, uint64_t u)
{
    return tree_put(tb, d, key, tree_new_uint(tb, u));
}

struct tree *tree_put_bool(struct tree_builder *tb, struct tree *d,
                           const char *key, int b)
{
    return tree_put(tb, d, key, tree_new_bool(tb, b));
}

struct tree *tree_put_dict(struct tree_builder *tb, struct tree *d,
                           const char *key)
{
    return tree_put(tb, d, key, tree_new_dict(tb));
}

struct tree *tree_put_list(struct tree_builder *tb, struct tree *d,
                           const char *key)
{
    return tree_put(tb, d, key, tree_new_list(tb));
}

struct tree *tree_get(const struct tree *dict, const char *key)
{
    struct tree *t;

    if (!dict || dict->type != TREE_DICT)
        return NULL;
    for (t = dict->v.kids.first; t; t = t->next)
        if (strcmp(t->key, key) == 0)
            return t;
    return NULL;
}

const char *tree_get_str(const struct tree *dict, const char *key)
{
    struct tree *t = tree_get(dict, key);

    return t && t->type == TREE_STR ? t->v.str.s : NULL;
}

int64_t tree_get_int(const struct tree *dict, const char *key, int *ok)
{
    struct tree *t = tree_get(dict, key);

    *ok = 1;
    if (t && t->type == TREE_INT)
        return t->v.i;
    if (t && t->type == TREE_UINT && t->v.u <= INT64_MAX)
        return (int64_t)t->v.u;
    *ok = 0;
    return 0;
}

struct tree *tree_take(struct tree *dict, const char *key)
{
    struct tree *t, *prev = NULL;

    if (!dict || dict->type != TREE_DICT)
        return NULL;
    for (t = dict->v.kids.first; t; prev = t, t = t->next) {
        if (strcmp(t->key, key) != 0)
            continue;
        if (prev)
            prev->next = t->next;
        else
            dict->v.kids.first = t->next;
        if (dict->v.kids.last == t)
            dict->v.kids.last = prev;
        dict->v.kids.count--;
        t->next = NULL;
        return t;
    }
    return NULL;
}

void tree_free(struct ins_alloc *alloc, struct tree *t)
{
    while (t) {
        struct tree *next = t->next;

        if (t->type == TREE_DICT || t->type == TREE_LIST)
            tree_free(alloc, t->v.kids.first);
        else if (t->type == TREE_STR || t->type == TREE_BLOB)
            alloc->free(alloc->opaque, t->v.str.s);
        alloc->free(alloc->opaque, t->key);
        alloc->free(alloc->opaque, t);
        t = next;
    }
}

/* ---- wire form ----
 * node   := u8 type, [u32 keylen, key bytes if parent is a dict], payload
 * BOOL   := u8;  INT, UINT := u64 little-endian
 * STR    := u32 len, bytes
 * DICT, LIST := u32 count, count nodes
 */

struct outbuf {
    struct ins_alloc *alloc;
    uint8_t *data;
    size_t len, cap;
    int failed;
};

static void out_bytes(struct outbuf *o, const void *p, size_t n)
{
    if (o->failed)
        return;
    if (n > SIZE_MAX / 2 - o->len) {
        o->failed = 1;
        return;
    }
    if (o->len + n > o->cap) {
        size_t cap = o->cap ? o->cap : 256;
        uint8_t *grown;

        while (cap < o->len + n)
            cap *= 2;
        grown = o->alloc->realloc(o->alloc->opaque, o->data, cap);
        if (!grown) {
            o->failed = 1;
            return;
        }
        o->data = grown;
        o->cap = cap;
    }
    memcpy(o->data + o->len, p, n);
    o->len += n;
}

static void out_u32(struct outbuf *o, uint32_t v)
{
    uint8_t b[4] = { v, v >> 8, v >> 16, v >> 24 };

    out_bytes(o, b, 4);
}

static void out_u64(struct outbuf *o, uint64_t v)
{
    uint8_t b[8];
    int i;

    for (i = 0; i < 8; i++)
        b[i] = (uint8_t)(v >> (8 * i));
    out_bytes(o, b, 8);
}

static void encode_node(struct outbuf *o, const struct tree *t, int in_dict)
{
    uint8_t type = (uint8_t)t->type;
    const struct tree *k;

    out_bytes(o, &type, 1);
    if (in_dict) {
        size_t kl = strlen(t->key);

        if (kl > UINT32_MAX) {
            o->failed = 1;
            return;
        }
        out_u32(o, (uint32_t)kl);
        out_bytes(o, t->key, kl);
    }
    switch (t->type) {
    case TREE_BOOL: {
        uint8_t b = (uint8_t)t->v.b;
        out_bytes(o, &b, 1);
        break;
    }
    case TREE_INT:
        out_u64(o, (uint64_t)t->v.i);
        break;
    case TREE_UINT:
        out_u64(o, t->v.u);
        break;
    case TREE_STR:
    case TREE_BLOB:
        if (t->v.str.len > UINT32_MAX) {
            o->failed = 1;
            return;
        }
        out_u32(o, (uint32_t)t->v.str.len);
        out_bytes(o, t->v.str.s, t->v.str.len);
        break;
    case TREE_DICT:
    case TREE_LIST:
        if (t->v.kids.count > UINT32_MAX) {
            o->failed = 1;
            return;
        }
        out_u32(o, (uint32_t)t->v.kids.count);
        for (k = t->v.kids.first; k; k = k->next)
            encode_node(o, k, t->type == TREE_DICT);
        break;
    }
}

uint8_t *tree_encode(struct ins_alloc *alloc, const struct tree *t,
                     size_t *len)
{
    struct outbuf o = { alloc, NULL, 0, 0, 0 };

    encode_node(&o, t, 0);
    if (o.failed) {
        alloc->free(alloc->opaque, o.data);
        return NULL;
    }
    *len = o.len;
    return o.data;
}

struct inbuf {
    const uint8_t *p;
    size_t left;
    size_t nodes;
    int failed;
};

static int in_bytes(struct inbuf *in, void *dst, size_t n)
{
    if (in->failed || n > in->left) {
        in->failed = 1;
        return -1;
    }
    memcpy(dst, in->p, n);
    in->p += n;
    in->left -= n;
    return 0;
}

static uint32_t in_u32(struct inbuf *in)
{
    uint8_t b[4] = { 0, 0, 0, 0 };

    in_bytes(in, b, 4);
    return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 |
           (uint32_t)b[3] << 24;
}

static uint64_t in_u64(struct inbuf *in)
{
    uint8_t b[8] = { 0 };
    uint64_t v = 0;
    int i;

    in_bytes(in, b, 8);
    for (i = 7; i >= 0; i--)
        v = v << 8 | b[i];
    return v;
}

/* Reads a length-prefixed string (with no NUL inside it unless binary). */
static char *in_bytes_str(struct inbuf *in, struct tree_builder *tb,
                          size_t *lenp, int binary)
{
    uint32_t len = in_u32(in);
    char *s;

    if (in->failed || len > in->left) {
        in->failed = 1;
        return NULL;
    }
    if (!binary && memchr(in->p, '\0', len)) {
        in->failed = 1;
        return NULL;
    }
    s = dup_bytes(tb, (const char *)in->p, len);
    if (!s) {
        in->failed = 1;
        return NULL;
    }
    in->p += len;
    in->left -= len;
    if (lenp)
        *lenp = len;
    return s;
}

static char *in_string(struct inbuf *in, struct tree_builder *tb, size_t *lenp)
{
    return in_bytes_str(in, tb, lenp, 0);
}

static struct tree *decode_node(struct inbuf *in, struct tree_builder *tb,
                                int in_dict, int depth)
{
    uint8_t type = 0;
    struct tree *t;
    uint32_t count, i;

    if (depth > TREE_MAX_DEPTH || ++in->nodes > TREE_MAX_NODES) {
        in->failed = 1;
        return NULL;
    }
    if (in_bytes(in, &type, 1) < 0)
        return NULL;
    if (type < TREE_BOOL || type > TREE_BLOB) {
        in->failed = 1;
        return NULL;
    }
    t = new_node(tb, (enum tree_type)type);
    if (!t) {
        in->failed = 1;
        return NULL;
    }
    if (in_dict) {
        t->key = in_string(in, tb, NULL);
        if (!t->key)
            goto fail;
    }
    switch (t->type) {
    case TREE_BOOL: {
        uint8_t b = 0;
        in_bytes(in, &b, 1);
        if (b > 1)
            in->failed = 1;
        t->v.b = b;
        break;
    }
    case TREE_INT:
        t->v.i = (int64_t)in_u64(in);
        break;
    case TREE_UINT:
        t->v.u = in_u64(in);
        break;
    case TREE_STR:
        t->v.str.s = in_string(in, tb, &t->v.str.len);
        break;
    case TREE_BLOB:
        t->v.str.s = in_bytes_str(in, tb, &t->v.str.len, 1);
        break;
    case TREE_DICT:
    case TREE_LIST:
        count = in_u32(in);
        /* Every node takes at least two bytes: a cheap bound on count.
         * Dicts are small records; a bound keeps the duplicate-key check
         * below cheap. */
        if (count > in->left / 2 ||
            (t->type == TREE_DICT && count > TREE_MAX_DICT))
            in->failed = 1;
        for (i = 0; i < count && !in->failed; i++) {
            struct tree *k = decode_node(in, tb, t->type == TREE_DICT,
                                         depth + 1);
            if (!k)
                break;
            if (t->type == TREE_DICT && tree_get(t, k->key)) {
                tree_free(tb->alloc, k);
                in->failed = 1;
                break;
            }
            link_child(t, k);
        }
        break;
    }
    if (in->failed)
        goto fail;
    return t;
fail:
    in->failed = 1;
    tree_free(tb->alloc, t);
    return NULL;
}

struct tree *tree_decode(struct ins_alloc *alloc, const uint8_t *buf,
                         size_t len)
{
    struct inbuf in = { buf, len, 0, 0 };
    struct tree_builder tb;
    struct tree *t;

    tree_builder_init(&tb, alloc);
    t = decode_node(&in, &tb, 0, 0);
    if (!t)
        return NULL;
    if (in.failed || in.left != 0) {
        tree_free(alloc, t);
        return NULL;
    }
    return t;
}

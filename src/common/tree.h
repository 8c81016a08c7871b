/*
 * tree.h - a small value tree (dict / list / string / integer / bool).
 *
 * The worker describes what it found in an image as a tree; the host
 * renders the tree as qemu-img's human or JSON output.  The tree is also
 * the wire format between the two: tree_encode() writes a compact binary
 * form, tree_decode() reads it back with every length and depth bounded,
 * because the host must treat whatever the worker says as untrusted.
 *
 * Dicts keep their members in insertion order.  Renderers that must
 * reproduce qemu's hash-table order (QDict) sort at output time.
 *
 * Memory comes from a struct ins_alloc so the engine can use the tree
 * without making system calls of its own.
 */
#ifndef INSTAR_TREE_H
#define INSTAR_TREE_H

#include <stddef.h>
#include <stdint.h>

struct ins_alloc {
    void *opaque;
    void *(*alloc)(void *opaque, size_t size);
    void *(*realloc)(void *opaque, void *ptr, size_t size);
    void (*free)(void *opaque, void *ptr);
};

/* The process-wide libc allocator, for code that is not in the engine. */
extern struct ins_alloc ins_libc_alloc;

enum tree_type {
    TREE_BOOL = 1,
    TREE_INT = 2,       /* int64_t */
    TREE_UINT = 3,      /* uint64_t */
    TREE_STR = 4,
    TREE_DICT = 5,
    TREE_LIST = 6,
    TREE_BLOB = 7,      /* bytes, NUL allowed; for packed records, never printed */
};

struct tree {
    enum tree_type type;
    char *key;                  /* member name when inside a dict */
    struct tree *next;          /* next sibling */
    union {
        int b;
        int64_t i;
        uint64_t u;
        struct { char *s; size_t len; } str;
        struct { struct tree *first, *last; size_t count; } kids;
    } v;
};

/*
 * A builder owns the allocator and a sticky failure flag: once an
 * allocation fails every later call is a no-op returning NULL, and the
 * caller checks tb->failed once at the end.
 */
struct tree_builder {
    struct ins_alloc *alloc;
    int failed;
    size_t bytes;               /* bytes allocated so far */
    size_t max_bytes;           /* 0 = unlimited */
};

void tree_builder_init(struct tree_builder *tb, struct ins_alloc *alloc);

struct tree *tree_new_dict(struct tree_builder *tb);
struct tree *tree_new_list(struct tree_builder *tb);
struct tree *tree_new_str(struct tree_builder *tb, const char *s);
struct tree *tree_new_strn(struct tree_builder *tb, const char *s, size_t len);
struct tree *tree_new_int(struct tree_builder *tb, int64_t i);
struct tree *tree_new_uint(struct tree_builder *tb, uint64_t u);
struct tree *tree_new_bool(struct tree_builder *tb, int b);
struct tree *tree_new_blob(struct tree_builder *tb, const void *data, size_t len);

/* Attach a value to a dict under key, or to the end of a list.
 * Both return the value (NULL when anything is NULL or failed). */
struct tree *tree_put(struct tree_builder *tb, struct tree *dict,
                      const char *key, struct tree *value);
struct tree *tree_append(struct tree_builder *tb, struct tree *list,
                         struct tree *value);

/* Shorthands for dict members. */
struct tree *tree_put_str(struct tree_builder *tb, struct tree *d,
                          const char *key, const char *s);
struct tree *tree_put_int(struct tree_builder *tb, struct tree *d,
                          const char *key, int64_t i);
struct tree *tree_put_uint(struct tree_builder *tb, struct tree *d,
                           const char *key, uint64_t u);
struct tree *tree_put_bool(struct tree_builder *tb, struct tree *d,
                           const char *key, int b);
struct tree *tree_put_dict(struct tree_builder *tb, struct tree *d,
                           const char *key);
struct tree *tree_put_list(struct tree_builder *tb, struct tree *d,
                           const char *key);

/* Lookups; NULL when absent or of another type. */
struct tree *tree_get(const struct tree *dict, const char *key);
const char *tree_get_str(const struct tree *dict, const char *key);
/* Integer member (INT, or UINT that fits); returns 0 and sets *ok=0 if absent. */
int64_t tree_get_int(const struct tree *dict, const char *key, int *ok);
/* Removes and returns a member (still owned by the caller's builder). */
struct tree *tree_take(struct tree *dict, const char *key);

void tree_free(struct ins_alloc *alloc, struct tree *t);

/*
 * Wire form.  tree_encode returns a buffer from alloc (length in *len),
 * or NULL on allocation failure.  tree_decode returns NULL on any malformed
 * or over-limit input; limits bound depth, node count and total size.
 */
uint8_t *tree_encode(struct ins_alloc *alloc, const struct tree *t,
                     size_t *len);

#define TREE_MAX_DEPTH 32
#define TREE_MAX_NODES 1000000
#define TREE_MAX_DICT 4096
struct tree *tree_decode(struct ins_alloc *alloc, const uint8_t *buf,
                         size_t len);

#endif

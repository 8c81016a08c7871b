/*
 * createopts.h - qemu's image creation options: the `-o key=value,...`
 * strings of qemu-img create, convert and measure.
 *
 * qemu parses these with QemuOpts against the target format's option list
 * followed by the file protocol's (size, nocow, preallocation,
 * extent_size_hint).  Parsing checks only names and value types; each
 * format then validates meanings in its own order.  This module does both
 * with qemu's messages:
 *
 *   co_find_format()   the target format: does it exist, can it create,
 *                      can it measure, which options does it take
 *   co_parse()         one option string into a list (repeatable; later
 *                      values override earlier ones, like QemuOpts)
 *   co_get*()          typed lookups
 *   co_qcow2_params()  qcow2's checks and defaults (cluster size, compat,
 *                      refcount width, preallocation, LUKS encryption)
 *   co_luks_params()   LUKS creation options and the header size they imply
 *
 * Messages follow the qemu-img the profile names (qemu_major: 7 or 10):
 * the two differ in how sizes like "-1" are rejected.
 */
#ifndef INSTAR_CREATEOPTS_H
#define INSTAR_CREATEOPTS_H

#include <stddef.h>
#include <stdint.h>

enum co_type { CO_STRING, CO_BOOL, CO_NUMBER, CO_SIZE };

/* One option a format accepts. */
struct co_desc {
    const char *name;
    enum co_type type;
};

/* What qemu's block layer knows about a format name given with -O. */
struct co_format {
    const char *name;
    const struct co_desc *desc;     /* NULL: "does not support image creation" */
    int measure;                    /* has .bdrv_measure */
    int min_major;                  /* first qemu-img major version with it */
};

/* The format named name, or NULL ("Unknown file format"). */
const struct co_format *co_find_format(const char *name, int qemu_major);

/* Options accepted by a format: its own list, then the file protocol's. */
const struct co_desc *co_find_desc(const struct co_format *fmt,
                                   const char *name, int qemu_major);

/* One parsed option; the list keeps qemu's order, later ones win. */
struct co_opt {
    char *name;
    char *str;                  /* the value as written ("on" for flags) */
    enum co_type type;
    int b;                      /* CO_BOOL */
    uint64_t u;                 /* CO_NUMBER, CO_SIZE */
};

struct co_opts {
    const struct co_format *fmt;
    int qemu_major;
    const char *progname;       /* prefix of warnings ("qemu-img") */
    struct co_opt *opt;
    size_t n, cap;
};

/* A failed parse or check: qemu's error line and the optional hint
 * lines that follow it (already newline-terminated), e.g. the size
 * suffix explanation. */
struct co_error {
    char msg[1024];
    char hint[256];
};

void co_init(struct co_opts *o, const struct co_format *fmt, int qemu_major);
void co_free(struct co_opts *o);

/*
 * qemu-img's accumulate_options() check for one -o argument: non-empty,
 * no leading ',', no odd run of trailing ','.  Returns 0 or -1.
 */
int co_valid_list(const char *list);

/*
 * Parses "key=value,flag,nokey,..." (",," escapes a comma in a value).
 * Returns 0, or -1 with err set; like qemu, options parsed before the
 * error stay in o.
 */
int co_parse(struct co_opts *o, const char *str, struct co_error *err);

/* Appends a size option as qemu_opt_set_number() does (--size). */
int co_set_size(struct co_opts *o, const char *name, uint64_t value);

/* The last value given for name, or NULL. */
const struct co_opt *co_get(const struct co_opts *o, const char *name);
const char *co_get_str(const struct co_opts *o, const char *name);
int co_get_bool(const struct co_opts *o, const char *name, int def);
uint64_t co_get_uint(const struct co_opts *o, const char *name, uint64_t def);

/*
 * qemu_strtosz() of the given qemu-img version: 0 with *out, -EINVAL or
 * -ERANGE.  *hex_suffix is set when qemu 7.2 would warn that a hex
 * number carries a suffix.
 */
int co_strtosz(const char *s, uint64_t *out, int qemu_major, int *hex_suffix);

/* ---- LUKS ---- */

/* Looks up a secret object by id: 0 if it exists, -1 if not. */
typedef int (*co_secret_fn)(void *opaque, const char *id);

struct co_luks {
    const char *key_secret;
    const char *cipher_alg;     /* qemu's names, defaults filled in */
    const char *cipher_mode;
    const char *ivgen_alg;
    const char *ivgen_hash_alg; /* NULL unless given or essiv */
    const char *hash_alg;
    uint32_t master_key_len;    /* bytes */
    uint64_t header_len;        /* bytes before the payload */
};

/*
 * LUKS creation options under prefix ("encrypt." for qcow2, "" for the
 * luks format), checked in the order qemu's LUKS creation checks them.
 * Returns 0, or -1 with err set.
 */
int co_luks_params(const struct co_opts *o, const char *prefix,
                   co_secret_fn secret, void *secret_opaque,
                   struct co_luks *l, struct co_error *err);

/* ---- qcow2 ---- */

enum co_prealloc { CO_PREALLOC_OFF, CO_PREALLOC_METADATA, CO_PREALLOC_FALLOC,
                   CO_PREALLOC_FULL };

struct co_qcow2 {
    uint64_t size;              /* "size", 0 when absent */
    uint64_t cluster_size;
    int version;                /* 2 (compat=0.10) or 3 */
    uint64_t refcount_bits;
    int extended_l2;
    enum co_prealloc prealloc;
    const char *backing_file;
    int has_luks;               /* encrypt.format=luks */
    struct co_luks luks;
};

/*
 * qcow2's option checks in qcow2_measure()'s order: extended_l2,
 * cluster_size, compat, refcount_bits, preallocation, encrypt.format and
 * the LUKS options.  Returns 0, or -1 with err set.
 */
int co_qcow2_params(const struct co_opts *o, co_secret_fn secret,
                    void *secret_opaque, struct co_qcow2 *p,
                    struct co_error *err);

/* qapi's PreallocMode names: 0 with *mode, -1 for an unknown name. */
int co_prealloc_parse(const char *s, enum co_prealloc *mode);

/* qemu-img's internal_snapshot_opts (-l snapshot.id=...,snapshot.name=...):
 * parse with co_parse() like a format's options. */
extern const struct co_format co_snapshot_format;

/* ---- --object secret,... ---- */

#define CO_MAX_OBJECTS 64

/* The objects defined with --object, for key-secret lookups. */
struct co_objects {
    char *id[CO_MAX_OBJECTS];
    size_t n;
};

/*
 * Defines an object as qemu-img's --object does.  Only "secret" objects
 * are supported (data=... or file=...; a file is checked to be readable,
 * never read).  Returns 0, or -1 with qemu's message in err (or instar's
 * for other object types).
 */
int co_object_add(struct co_objects *objs, const char *def,
                  struct co_error *err);
void co_objects_free(struct co_objects *objs);

/* A co_secret_fn over a struct co_objects. */
int co_secret_lookup(void *objs, const char *id);

#endif

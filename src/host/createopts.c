/*
 * createopts.c - qemu's image creation options (see createopts.h).
 *
 * The option tables copy qemu's create_opts lists (names and types only),
 * in qemu's order; the parser follows QemuOpts' rules:
 *
 *   - "key=value": the name ends at the first '=' or ','; in a value ",,"
 *     stands for one ','
 *   - "key" alone means key=on, "nokey" means key=off (for any option,
 *     so "nocompat" sets compat to "off")
 *   - "id=..." is accepted and ignored
 *   - an unknown name fails with "Invalid parameter 'NAME'"; values are
 *     checked against the option's type as they are parsed
 */
#include "createopts.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- option tables ---- */

/* The file protocol's options, appended to every format's list. */
static const struct co_desc file_opts[] = {
    { "size", CO_SIZE },
    { "nocow", CO_BOOL },
    { "preallocation", CO_STRING },
    { "extent_size_hint", CO_SIZE },
    { NULL, 0 },
};

/* bdrv_create_opts_simple: protocols that can only "create" by checking. */
static const struct co_desc simple_opts[] = {
    { "size", CO_SIZE },
    { "preallocation", CO_STRING },
    { NULL, 0 },
};

static const struct co_desc raw_opts[] = {
    { "size", CO_SIZE },
    { NULL, 0 },
};

static const struct co_desc qcow2_opts[] = {
    { "encryption", CO_BOOL },
    { "encrypt.format", CO_STRING },
    { "encrypt.key-secret", CO_STRING },
    { "encrypt.cipher-alg", CO_STRING },
    { "encrypt.cipher-mode", CO_STRING },
    { "encrypt.ivgen-alg", CO_STRING },
    { "encrypt.ivgen-hash-alg", CO_STRING },
    { "encrypt.hash-alg", CO_STRING },
    { "encrypt.iter-time", CO_NUMBER },
    { "cluster_size", CO_SIZE },
    { "extended_l2", CO_BOOL },
    { "preallocation", CO_STRING },
    { "compression_type", CO_STRING },
    { "size", CO_SIZE },
    { "compat", CO_STRING },
    { "backing_file", CO_STRING },
    { "backing_fmt", CO_STRING },
    { "data_file", CO_STRING },
    { "data_file_raw", CO_BOOL },
    { "lazy_refcounts", CO_BOOL },
    { "refcount_bits", CO_NUMBER },
    { NULL, 0 },
};

/* The luks format; qemu 8.2 added detached-header (see luks_opts_10). */
static const struct co_desc luks_opts[] = {
    { "size", CO_SIZE },
    { "key-secret", CO_STRING },
    { "cipher-alg", CO_STRING },
    { "cipher-mode", CO_STRING },
    { "ivgen-alg", CO_STRING },
    { "ivgen-hash-alg", CO_STRING },
    { "hash-alg", CO_STRING },
    { "iter-time", CO_NUMBER },
    { NULL, 0 },
};

static const struct co_desc luks_opts_10[] = {
    { "size", CO_SIZE },
    { "key-secret", CO_STRING },
    { "cipher-alg", CO_STRING },
    { "cipher-mode", CO_STRING },
    { "ivgen-alg", CO_STRING },
    { "ivgen-hash-alg", CO_STRING },
    { "hash-alg", CO_STRING },
    { "iter-time", CO_NUMBER },
    { "detached-header", CO_BOOL },
    { NULL, 0 },
};

static const struct co_desc vmdk_opts[] = {
    { "size", CO_SIZE },
    { "adapter_type", CO_STRING },
    { "backing_file", CO_STRING },
    { "backing_fmt", CO_STRING },
    { "compat6", CO_BOOL },
    { "hwversion", CO_STRING },
    { "toolsversion", CO_STRING },
    { "subformat", CO_STRING },
    { "zeroed_grain", CO_BOOL },
    { NULL, 0 },
};

static const struct co_desc vpc_opts[] = {
    { "size", CO_SIZE },
    { "subformat", CO_STRING },
    { "force_size", CO_BOOL },
    { NULL, 0 },
};

static const struct co_desc vhdx_opts[] = {
    { "size", CO_SIZE },
    { "log_size", CO_SIZE },
    { "block_size", CO_SIZE },
    { "subformat", CO_STRING },
    { "block_state_zero", CO_BOOL },
    { NULL, 0 },
};

/* Debian builds vdi without CONFIG_VDI_BLOCK_SIZE: no cluster_size. */
static const struct co_desc vdi_opts[] = {
    { "size", CO_SIZE },
    { "static", CO_BOOL },
    { NULL, 0 },
};

static const struct co_desc qcow_opts[] = {
    { "size", CO_SIZE },
    { "backing_file", CO_STRING },
    { "backing_fmt", CO_STRING },
    { "encryption", CO_BOOL },
    { "encrypt.format", CO_STRING },
    { "encrypt.key-secret", CO_STRING },
    { NULL, 0 },
};

static const struct co_desc qed_opts[] = {
    { "size", CO_SIZE },
    { "backing_file", CO_STRING },
    { "backing_fmt", CO_STRING },
    { "cluster_size", CO_SIZE },
    { "table_size", CO_SIZE },
    { NULL, 0 },
};

static const struct co_desc parallels_opts[] = {
    { "size", CO_SIZE },
    { "cluster_size", CO_SIZE },
    { NULL, 0 },
};

/*
 * Every format name Debian's qemu-img knows (its "Supported formats"
 * list).  Protocol drivers that live in modules (gluster, iscsi, nfs, rbd,
 * ssh, curl) are listed with the simple option list: their own lists only
 * matter for option errors with those targets.
 */
static const struct co_format formats[] = {
    { "qcow2", qcow2_opts, 1, 0 },
    { "raw", raw_opts, 1, 0 },
    { "luks", luks_opts, 1, 0 },
    { "vmdk", vmdk_opts, 0, 0 },
    { "vpc", vpc_opts, 0, 0 },
    { "vhdx", vhdx_opts, 0, 0 },
    { "vdi", vdi_opts, 0, 0 },
    { "qcow", qcow_opts, 0, 0 },
    { "qed", qed_opts, 0, 0 },
    { "parallels", parallels_opts, 0, 0 },
    { "file", file_opts, 0, 0 },
    { "host_device", simple_opts, 0, 0 },
    { "host_cdrom", simple_opts, 0, 0 },
    { "nbd", simple_opts, 0, 0 },
    { "nvme", simple_opts, 0, 0 },
    { "iscsi", simple_opts, 0, 0 },
    { "iser", simple_opts, 0, 0 },
    { "gluster", simple_opts, 0, 0 },
    { "nfs", simple_opts, 0, 0 },
    { "rbd", simple_opts, 0, 0 },
    { "ssh", simple_opts, 0, 0 },
    { "blkdebug", NULL, 0, 0 },
    { "blklogwrites", NULL, 0, 0 },
    { "blkverify", NULL, 0, 0 },
    { "bochs", NULL, 0, 0 },
    { "cloop", NULL, 0, 0 },
    { "compress", NULL, 0, 0 },
    { "copy-before-write", NULL, 0, 0 },
    { "copy-on-read", NULL, 0, 0 },
    { "dmg", NULL, 0, 0 },
    { "ftp", NULL, 0, 0 },
    { "ftps", NULL, 0, 0 },
    { "http", NULL, 0, 0 },
    { "https", NULL, 0, 0 },
    { "null-aio", NULL, 0, 0 },
    { "null-co", NULL, 0, 0 },
    { "preallocate", NULL, 0, 0 },
    { "quorum", NULL, 0, 0 },
    { "replication", NULL, 0, 0 },
    { "snapshot-access", NULL, 0, 0 },
    { "throttle", NULL, 0, 0 },
    { "vvfat", NULL, 0, 0 },
};

const struct co_format *co_find_format(const char *name, int qemu_major)
{
    size_t i;

    for (i = 0; i < sizeof(formats) / sizeof(formats[0]); i++)
        if (strcmp(formats[i].name, name) == 0 &&
            qemu_major >= formats[i].min_major)
            return &formats[i];
    return NULL;
}

static const struct co_desc *find_in(const struct co_desc *d, const char *name)
{
    for (; d && d->name; d++)
        if (strcmp(d->name, name) == 0)
            return d;
    return NULL;
}

static const struct co_desc snapshot_opts[] = {
    { "snapshot.id", CO_STRING },
    { "snapshot.name", CO_STRING },
    { NULL, 0 },
};

const struct co_format co_snapshot_format = { "snapshot", snapshot_opts, 0, 0 };

const struct co_desc *co_find_desc(const struct co_format *fmt,
                                   const char *name, int qemu_major)
{
    const struct co_desc *list = fmt->desc, *d;

    if (list == luks_opts && qemu_major >= 9)
        list = luks_opts_10;
    d = find_in(list, name);
    if (d || fmt == &co_snapshot_format)
        return d;
    return find_in(file_opts, name);
}

/* ---- numbers ---- */

static int64_t suffix_mul(char c)
{
    switch (toupper((unsigned char)c)) {
    case 'B': return 1;
    case 'K': return 1LL << 10;
    case 'M': return 1LL << 20;
    case 'G': return 1LL << 30;
    case 'T': return 1LL << 40;
    case 'P': return 1LL << 50;
    case 'E': return 1LL << 60;
    }
    return -1;
}

/* strtoull with qemu's error conventions: -ERANGE, -EINVAL for no digits;
 * *end after the digits. */
static int strtou64(const char *s, const char **end, int base, uint64_t *out)
{
    char *e;

    errno = 0;
    *out = strtoull(s, &e, base);
    *end = e;
    if (errno == ERANGE) {
        *out = UINT64_MAX;
        return -ERANGE;
    }
    return e == s ? -EINVAL : 0;
}

/*
 * strtoull(s, end, 0) as the C library of the profile's qemu-img has it:
 * Debian 13's glibc (2.38 and later, C23) also reads "0b101" as binary.
 */
static int strtou64_base0(const char *s, const char **end, uint64_t *out,
                          int c23)
{
    const char *p = s;
    int neg = 0, rc;

    if (!c23)
        return strtou64(s, end, 0, out);
    while (isspace((unsigned char)*p))
        p++;
    if (*p == '+' || *p == '-')
        neg = *p++ == '-';
    if (p[0] != '0' || (p[1] != 'b' && p[1] != 'B') || (p[2] != '0' && p[2] != '1'))
        return strtou64(s, end, 0, out);
    rc = strtou64(p + 2, end, 2, out);
    if (rc == 0 && neg)
        *out = -*out;
    return rc;
}

/* strtoll(s, end, 0), with C23's "0b" prefix when c23 is set; errno as
 * strtoll sets it. */
static long long strtoi64_base0(const char *s, char **end, int c23)
{
    const char *p = s, *e;
    uint64_t u;
    int neg = 0;

    while (isspace((unsigned char)*p))
        p++;
    if (*p == '+' || *p == '-')
        neg = *p++ == '-';
    if (!c23 || p[0] != '0' || (p[1] != 'b' && p[1] != 'B') ||
        (p[2] != '0' && p[2] != '1')) {
        errno = 0;
        return strtoll(s, end, 0);
    }
    errno = 0;
    if (strtou64(p + 2, &e, 2, &u) < 0 || u > (uint64_t)INT64_MAX + neg) {
        errno = ERANGE;
        u = neg ? (uint64_t)INT64_MAX + 1 : INT64_MAX;
    }
    *end = (char *)e;
    return neg ? (long long)(0 - u) : (long long)u;
}

/*
 * result = (val + valf / 2^64) * mul, rounded half up; -ERANGE when it
 * does not fit 64 bits.
 */
static int scale(uint64_t val, uint64_t valf, uint64_t mul, uint64_t *out)
{
    unsigned __int128 whole = (unsigned __int128)val * mul;
    unsigned __int128 frac = (unsigned __int128)valf * mul;
    unsigned __int128 r = whole + (frac >> 64) + ((uint64_t)frac >> 63);

    if (r >> 64)
        return -ERANGE;
    *out = (uint64_t)r;
    return 0;
}

/* qemu 7.2's do_strtosz() (util/cutils.c) with end == NULL. */
static int strtosz_72(const char *s, uint64_t *out, int *hex_suffix)
{
    const char *end;
    uint64_t val = 0, valf = 0;
    int64_t mul;
    int rc, hex = 0;

    rc = strtou64(s, &end, 10, &val);
    if (rc == 0 && memchr(s, '-', (size_t)(end - s)))
        return -EINVAL;
    if (rc)
        return *end ? -EINVAL : rc;
    if (val == 0 && (*end == 'x' || *end == 'X')) {
        rc = strtou64(s, &end, 16, &val);
        if (rc)
            return *end ? -EINVAL : rc;
        if (*end == '.')
            return -EINVAL;
        hex = 1;
    } else if (*end == '.') {
        char *e;
        double f;

        errno = 0;
        f = strtod(end, &e);
        if (e == end) {
            end++;          /* "1.k": the fraction is empty */
        } else if (errno == ERANGE) {
            /* qemu skips one character past an underflowing fraction */
            end = *e ? e + 1 : e;
        } else {
            if (memchr(end, 'e', (size_t)(e - end)) ||
                memchr(end, 'E', (size_t)(e - end)))
                return -EINVAL;
            end = e;
            /* A double of 1.0 or more overflows the conversion; on x86
             * the result is 0. */
            valf = f * 0x1p64 >= 0x1p64 ? 0 : (uint64_t)(f * 0x1p64);
        }
    }
    mul = suffix_mul(*end);
    if (mul > 0) {
        *hex_suffix = hex;      /* qemu 7.2 warns right here */
        end++;
    } else {
        mul = 1;
    }
    if (*end)
        return -EINVAL;
    if (mul == 1)
        rc = valf ? -EINVAL : 0;
    else
        rc = scale(val, valf, (uint64_t)mul, &val);
    if (rc == 0)
        *out = val;
    return rc;
}

/* qemu 10.0's do_strtosz() (util/cutils.c) with end == NULL. */
static int strtosz_10(const char *s, uint64_t *out)
{
    const char *end;
    const char *p;
    uint64_t val = 0, valf = 0;
    int64_t mul;
    int rc;

    /* parse_uint(): negative numbers are out of range. */
    rc = strtou64(s, &end, 10, &val);
    if (rc == 0) {
        for (p = s; isspace((unsigned char)*p); p++)
            ;
        if (*p == '-') {
            val = 0;
            rc = -ERANGE;
        }
    } else if (rc == -EINVAL) {
        end = s;
        val = 0;
    }
    if (rc == -ERANGE)
        return *end ? -EINVAL : rc;
    if (rc == 0 && val == 0 && (*end == 'x' || *end == 'X')) {
        rc = strtou64(s, &end, 16, &val);
        if (rc)
            return *end ? -EINVAL : rc;
        if (*end == '.' || suffix_mul(*end) > 0)
            return -EINVAL;
    } else if (*end == '.' || (end == s && strchr(s, '.'))) {
        double f = 0.0;

        if (rc == 0 && *end == '.' && !isdigit((unsigned char)end[1])) {
            end++;
        } else {
            /* strtod would read 'e' as an exponent; qemu cuts it off. */
            size_t len = strcspn(end, "eE");
            char *copy = strndup(end, len), *e;

            if (!copy)
                return -EINVAL;
            errno = 0;
            f = strtod(copy, &e);
            if (e == copy) {
                rc = -EINVAL;
            } else if (!isfinite(f)) {
                rc = -EINVAL;
                e = copy;
                f = 0.0;
            } else {
                rc = errno == ERANGE ? -ERANGE : 0;
            }
            end += e - copy;
            free(copy);
            if (signbit(f))
                return *end ? -EINVAL : -ERANGE;
        }
        if (f == 1.0) {
            if (val == UINT64_MAX)
                return *end ? -EINVAL : -ERANGE;
            val++;
        } else if (rc == -ERANGE) {
            valf = 1;       /* underflow: a tiny fraction */
            rc = 0;
        } else {
            valf = (uint64_t)(f * 0x1p64);
            if (valf == 0 && f > 0.0)
                valf = 1;
        }
    }
    if (rc)
        return rc;
    mul = suffix_mul(*end);
    if (mul > 0)
        end++;
    else
        mul = 1;
    if (*end)
        return -EINVAL;
    if (mul == 1)
        rc = valf ? -EINVAL : 0;
    else
        rc = scale(val, valf, (uint64_t)mul, &val);
    if (rc == 0)
        *out = val;
    return rc;
}

int co_strtosz(const char *s, uint64_t *out, int qemu_major, int *hex_suffix)
{
    *hex_suffix = 0;
    return qemu_major >= 8 ? strtosz_10(s, out) : strtosz_72(s, out, hex_suffix);
}

/* ---- parsing ---- */

static void set_err(struct co_error *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void set_err(struct co_error *err, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
    va_end(ap);
    err->hint[0] = '\0';
}

void co_init(struct co_opts *o, const struct co_format *fmt, int qemu_major)
{
    memset(o, 0, sizeof(*o));
    o->fmt = fmt;
    o->qemu_major = qemu_major;
    o->progname = "qemu-img";
}

void co_free(struct co_opts *o)
{
    size_t i;

    for (i = 0; i < o->n; i++) {
        free(o->opt[i].name);
        free(o->opt[i].str);
    }
    free(o->opt);
    o->opt = NULL;
    o->n = o->cap = 0;
}

int co_valid_list(const char *list)
{
    size_t len = strlen(list), i;

    if (!list[0] || list[0] == ',')
        return -1;
    for (i = len; i > 0 && list[i - 1] == ','; i--)
        ;
    return (len - i) % 2 ? -1 : 0;
}

/* Converts the value by type; qemu's qemu_opt_parse() messages. */
static int parse_value(struct co_opts *o, struct co_opt *opt,
                       struct co_error *err)
{
    const char *v = opt->str;
    int hex = 0, rc;

    switch (opt->type) {
    case CO_STRING:
        return 0;
    case CO_BOOL:
        if (!strcmp(v, "on") || !strcmp(v, "yes") || !strcmp(v, "true") ||
            !strcmp(v, "y")) {
            opt->b = 1;
            return 0;
        }
        if (!strcmp(v, "off") || !strcmp(v, "no") || !strcmp(v, "false") ||
            !strcmp(v, "n")) {
            opt->b = 0;
            return 0;
        }
        set_err(err, "Parameter '%s' expects 'on' or 'off'", opt->name);
        return -1;
    case CO_NUMBER: {
        const char *end;

        rc = strtou64_base0(v, &end, &opt->u, o->qemu_major >= 10);
        if (rc == 0 && *end)
            rc = -EINVAL;
        if (rc == -ERANGE) {
            set_err(err, "Value '%s' is too large for parameter '%s'", v,
                    opt->name);
            return -1;
        }
        if (rc) {
            set_err(err, "Parameter '%s' expects a number", opt->name);
            return -1;
        }
        return 0;
    }
    case CO_SIZE:
        rc = co_strtosz(v, &opt->u, o->qemu_major, &hex);
        /* qemu 7.2 warns (and carries on) about "0x10k". */
        if (hex)
            fprintf(stderr, "%s: warning: Using a multiplier suffix on "
                    "hex numbers is deprecated: %s\n",
                    o->progname ? o->progname : "qemu-img", v);
        if (rc == -ERANGE) {
            set_err(err, "Value '%s' is out of range for parameter '%s'", v,
                    opt->name);
            return -1;
        }
        if (rc) {
            set_err(err, "Parameter '%s' expects a non-negative number below 2^64",
                    opt->name);
            snprintf(err->hint, sizeof(err->hint),
                     "Optional suffix k, M, G, T, P or E means kilo-, mega-, "
                     "giga-, tera-, peta-\nand exabytes, respectively.\n");
            return -1;
        }
        return 0;
    }
    return 0;
}

static int append(struct co_opts *o, char *name, char *str, enum co_type type,
                  struct co_opt **out)
{
    if (o->n == o->cap) {
        size_t cap = o->cap ? o->cap * 2 : 16;
        struct co_opt *n = realloc(o->opt, cap * sizeof(*n));

        if (!n)
            return -1;
        o->opt = n;
        o->cap = cap;
    }
    memset(&o->opt[o->n], 0, sizeof(o->opt[0]));
    o->opt[o->n].name = name;
    o->opt[o->n].str = str;
    o->opt[o->n].type = type;
    *out = &o->opt[o->n++];
    return 0;
}

/* A value up to the next single ','; ",," is a literal comma. */
static char *take_value(const char **pp)
{
    const char *p = *pp;
    size_t len = 0, cap = strlen(p) + 1;
    char *v = malloc(cap);

    if (!v)
        return NULL;
    while (*p) {
        if (*p == ',') {
            if (p[1] != ',')
                break;
            p++;
        }
        v[len++] = *p++;
    }
    v[len] = '\0';
    *pp = p;
    return v;
}

int co_parse(struct co_opts *o, const char *str, struct co_error *err)
{
    const char *p = str;

    while (*p) {
        size_t len = strcspn(p, "=,");
        const struct co_desc *d;
        struct co_opt *opt;
        char *name, *value;

        name = strndup(p, len);
        if (!name)
            goto nomem;
        if (p[len] != '=') {
            /* A bare flag: "key" is key=on, "nokey" key=off. */
            if (strncmp(name, "no", 2) == 0) {
                memmove(name, name + 2, strlen(name + 2) + 1);
                value = strdup("off");
            } else {
                value = strdup("on");
            }
            p += len;
        } else {
            p += len + 1;
            value = take_value(&p);
        }
        if (!value) {
            free(name);
            goto nomem;
        }
        if (*p == ',')
            p++;
        if (strcmp(name, "id") == 0) {
            free(name);
            free(value);
            continue;
        }
        d = co_find_desc(o->fmt, name, o->qemu_major);
        if (!d) {
            set_err(err, "Invalid parameter '%s'", name);
            free(name);
            free(value);
            return -1;
        }
        if (append(o, name, value, d->type, &opt) < 0) {
            free(name);
            free(value);
            goto nomem;
        }
        if (parse_value(o, opt, err) < 0) {
            o->n--;
            free(opt->name);
            free(opt->str);
            return -1;
        }
    }
    return 0;
nomem:
    set_err(err, "Out of memory");
    return -1;
}

int co_set_size(struct co_opts *o, const char *name, uint64_t value)
{
    struct co_opt *opt;
    char *n = strdup(name), *s = malloc(24);

    if (!n || !s || append(o, n, s, CO_SIZE, &opt) < 0) {
        free(n);
        free(s);
        return -1;
    }
    snprintf(s, 24, "%llu", (unsigned long long)value);
    opt->u = value;
    return 0;
}

const struct co_opt *co_get(const struct co_opts *o, const char *name)
{
    size_t i;

    for (i = o->n; i > 0; i--)
        if (strcmp(o->opt[i - 1].name, name) == 0)
            return &o->opt[i - 1];
    return NULL;
}

const char *co_get_str(const struct co_opts *o, const char *name)
{
    const struct co_opt *opt = co_get(o, name);

    return opt ? opt->str : NULL;
}

int co_get_bool(const struct co_opts *o, const char *name, int def)
{
    const struct co_opt *opt = co_get(o, name);

    return opt ? opt->b : def;
}

uint64_t co_get_uint(const struct co_opts *o, const char *name, uint64_t def)
{
    const struct co_opt *opt = co_get(o, name);

    return opt ? opt->u : def;
}

/* ---- enumerations (qemu's QAPI names) ---- */

static int enum_index(const char *const *names, const char *s)
{
    int i;

    for (i = 0; names[i]; i++)
        if (strcmp(names[i], s) == 0)
            return i;
    return -1;
}

static const char *const prealloc_names[] = {
    "off", "metadata", "falloc", "full", NULL,
};

int co_prealloc_parse(const char *s, enum co_prealloc *mode)
{
    int i = enum_index(prealloc_names, s);

    if (i < 0)
        return -1;
    *mode = (enum co_prealloc)i;
    return 0;
}

/* A cipher: its QAPI name, key length, LUKS family, and what the crypto
 * backend of Debian's qemu (nettle) does with it. */
struct cipher {
    const char *name;
    uint32_t key_len;
    const char *luks_name;      /* NULL: "Algorithm '%s' not supported" */
    const char *essiv_family;   /* NULL: "Cipher %s not supported with essiv" */
    int ecb_only;               /* sm4: nettle has no cbc/xts/ctr for it */
    int no_xts;                 /* 64-bit block ciphers */
    int min_major;
};

static const struct cipher ciphers[] = {
    { "aes-128", 16, "aes", "AES", 0, 0, 0 },
    { "aes-192", 24, "aes", "AES", 0, 0, 0 },
    { "aes-256", 32, "aes", "AES", 0, 0, 0 },
    { "des", 8, NULL, NULL, 0, 1, 0 },
    { "3des", 24, NULL, NULL, 0, 1, 0 },
    { "cast5-128", 16, "cast5", NULL, 0, 1, 0 },
    { "serpent-128", 16, "serpent", "Serpent", 0, 0, 0 },
    { "serpent-192", 24, "serpent", "Serpent", 0, 0, 0 },
    { "serpent-256", 32, "serpent", "Serpent", 0, 0, 0 },
    { "twofish-128", 16, "twofish", "Twofish", 0, 0, 0 },
    { "twofish-192", 24, "twofish", "Twofish", 0, 0, 0 },
    { "twofish-256", 32, "twofish", "Twofish", 0, 0, 0 },
    { "sm4", 16, "sm4", NULL, 1, 0, 9 },
};

static const struct cipher *find_cipher(const char *s, int qemu_major)
{
    size_t i;

    for (i = 0; i < sizeof(ciphers) / sizeof(ciphers[0]); i++)
        if (strcmp(ciphers[i].name, s) == 0 && qemu_major >= ciphers[i].min_major)
            return &ciphers[i];
    return NULL;
}

struct hash {
    const char *name;
    uint32_t digest_len;
    int min_major;
};

static const struct hash hashes[] = {
    { "md5", 16, 0 }, { "sha1", 20, 0 }, { "sha224", 28, 0 },
    { "sha256", 32, 0 }, { "sha384", 48, 0 }, { "sha512", 64, 0 },
    { "ripemd160", 20, 0 }, { "sm3", 32, 9 },
};

static const struct hash *find_hash(const char *s, int qemu_major)
{
    size_t i;

    for (i = 0; i < sizeof(hashes) / sizeof(hashes[0]); i++)
        if (strcmp(hashes[i].name, s) == 0 && qemu_major >= hashes[i].min_major)
            return &hashes[i];
    return NULL;
}

static const char *const mode_names[] = { "ecb", "cbc", "xts", "ctr", NULL };
static const char *const ivgen_names[] = { "plain", "plain64", "essiv", NULL };

/* ---- LUKS ---- */

/* An option under the prefix, or NULL. */
static const char *luks_opt(const struct co_opts *o, const char *prefix,
                            const char *name)
{
    char key[64];

    snprintf(key, sizeof(key), "%s%s", prefix, name);
    return co_get_str(o, key);
}

/* The QAPI visitor's enum check: the name is the member's, unprefixed. */
static int luks_enum(const struct co_opts *o, const char *prefix,
                     const char *name, int ok, struct co_error *err)
{
    const char *v = luks_opt(o, prefix, name);

    if (v && !ok) {
        set_err(err, "Parameter '%s' does not accept value '%s'", name, v);
        return -1;
    }
    return 0;
}

/*
 * qemu's PBKDF calibration measures the host (about a million SHA-256
 * iterations a second); iter-time only scales that count.  Absurd
 * iter-time values fail in qemu with the measured count in the message;
 * instar uses this nominal rate instead.
 */
#define NOMINAL_PBKDF_RATE 1000000ull

int co_luks_params(const struct co_opts *o, const char *prefix,
                   co_secret_fn secret, void *secret_opaque,
                   struct co_luks *l, struct co_error *err)
{
    const char *alg = luks_opt(o, prefix, "cipher-alg");
    const char *mode = luks_opt(o, prefix, "cipher-mode");
    const char *ivgen = luks_opt(o, prefix, "ivgen-alg");
    const char *ivhash = luks_opt(o, prefix, "ivgen-hash-alg");
    const char *hash = luks_opt(o, prefix, "hash-alg");
    const char *iter = luks_opt(o, prefix, "iter-time");
    const struct cipher *c;
    long long iter_time = 2000;

    memset(l, 0, sizeof(*l));
    /* The visitor, in QAPI member order. */
    if (luks_enum(o, prefix, "cipher-alg", !alg || find_cipher(alg, o->qemu_major), err) ||
        luks_enum(o, prefix, "cipher-mode", !mode || enum_index(mode_names, mode) >= 0, err) ||
        luks_enum(o, prefix, "ivgen-alg", !ivgen || enum_index(ivgen_names, ivgen) >= 0, err) ||
        luks_enum(o, prefix, "ivgen-hash-alg", !ivhash || find_hash(ivhash, o->qemu_major), err) ||
        luks_enum(o, prefix, "hash-alg", !hash || find_hash(hash, o->qemu_major), err))
        return -1;
    if (iter) {
        char *end;

        /* The QAPI visitor's qemu_strtoi64(). */
        iter_time = strtoi64_base0(iter, &end, o->qemu_major >= 10);
        if (end == iter || *end || errno) {
            set_err(err, "Parameter 'iter-time' expects integer");
            return -1;
        }
    }
    if (!*prefix && o->qemu_major >= 9 && co_get(o, "detached-header")) {
        set_err(err, "Parameter 'detached-header' is unexpected");
        return -1;
    }

    /* qcrypto_block_luks_create(): defaults, then its checks in order. */
    l->cipher_alg = alg ? alg : "aes-256";
    l->cipher_mode = mode ? mode : "xts";
    l->ivgen_alg = ivgen ? ivgen : "plain64";
    l->hash_alg = hash ? hash : "sha256";
    l->ivgen_hash_alg = ivhash;
    if (!ivhash && strcmp(l->ivgen_alg, "essiv") == 0)
        l->ivgen_hash_alg = "sha256";
    l->key_secret = luks_opt(o, prefix, "key-secret");
    if (!l->key_secret) {
        set_err(err, "Parameter '%skey-secret' is required for cipher", prefix);
        return -1;
    }
    if (secret && secret(secret_opaque, l->key_secret) < 0) {
        set_err(err, "No secret with id '%s'", l->key_secret);
        return -1;
    }
    c = find_cipher(l->cipher_alg, o->qemu_major);
    if (!c->luks_name) {
        set_err(err, "Algorithm '%s' not supported", c->name);
        return -1;
    }
    if (strcmp(l->ivgen_alg, "essiv") == 0) {
        const struct hash *h = find_hash(l->ivgen_hash_alg, o->qemu_major);

        if (h->digest_len != c->key_len) {
            if (!c->essiv_family) {
                set_err(err, "Cipher %s not supported with essiv", c->name);
                return -1;
            }
            if (h->digest_len != 16 && h->digest_len != 24 && h->digest_len != 32) {
                set_err(err, "No %s cipher with key size %u available",
                        c->essiv_family, h->digest_len);
                return -1;
            }
        }
    }
    if ((c->ecb_only && strcmp(l->cipher_mode, "ecb") != 0) ||
        (c->no_xts && strcmp(l->cipher_mode, "xts") == 0)) {
        set_err(err, "Unsupported cipher mode %s", l->cipher_mode);
        return -1;
    }
    /* The PBKDF iteration count: calibrated rate * iter-time / 1000 / 8. */
    if (iter_time != 0 &&
        NOMINAL_PBKDF_RATE > UINT64_MAX / (unsigned long long)iter_time) {
        set_err(err, "PBKDF iterations %llu too large to scale: %s",
                NOMINAL_PBKDF_RATE, strerror(ERANGE));
        return -1;
    }
    if (NOMINAL_PBKDF_RATE * (unsigned long long)iter_time / 1000 / 8 > UINT32_MAX) {
        set_err(err, "PBKDF iterations %llu larger than %u: %s",
                NOMINAL_PBKDF_RATE * (unsigned long long)iter_time / 1000 / 8,
                UINT32_MAX, strerror(ERANGE));
        return -1;
    }
    l->master_key_len = c->key_len;
    if (strcmp(l->cipher_mode, "xts") == 0)
        l->master_key_len *= 2;
    /* 4096 bytes of header, then 8 key slots each holding the master key
     * split into 4000 stripes, in sectors rounded up to 8 sectors. */
    {
        uint64_t split = ((uint64_t)l->master_key_len * 4000 + 511) / 512;

        split = (split + 7) / 8 * 8;
        l->header_len = (8 + 8 * split) * 512;
    }
    return 0;
}

/* ---- qcow2 ---- */

int co_qcow2_params(const struct co_opts *o, co_secret_fn secret,
                    void *secret_opaque, struct co_qcow2 *p,
                    struct co_error *err)
{
    uint64_t cs;
    const char *s;
    int bits;

    memset(p, 0, sizeof(*p));
    p->extended_l2 = co_get_bool(o, "extended_l2", 0);

    cs = co_get_uint(o, "cluster_size", 65536);
    bits = cs ? __builtin_ctzll(cs) : 64;
    if (bits < 9 || bits > 21 || cs != 1ull << bits) {
        set_err(err, "Cluster size must be a power of two between 512 and 2048k");
        return -1;
    }
    if (p->extended_l2 && cs < 512 * 32) {
        set_err(err, "Extended L2 entries are only supported with cluster "
                "sizes of at least %u bytes", 512 * 32);
        return -1;
    }
    p->cluster_size = cs;

    s = co_get_str(o, "compat");
    if (!s || strcmp(s, "1.1") == 0) {
        p->version = 3;
    } else if (strcmp(s, "0.10") == 0) {
        p->version = 2;
    } else {
        set_err(err, "Invalid compatibility level: '%s'", s);
        return -1;
    }

    p->refcount_bits = co_get_uint(o, "refcount_bits", 16);
    if (p->refcount_bits > 64 || !p->refcount_bits ||
        (p->refcount_bits & (p->refcount_bits - 1))) {
        set_err(err, "Refcount width must be a power of two and may not "
                "exceed 64 bits");
        return -1;
    }
    if (p->version < 3 && p->refcount_bits != 16) {
        set_err(err, "Different refcount widths than 16 bits require "
                "compatibility level 1.1 or above (use compat=1.1 or greater)");
        return -1;
    }

    s = co_get_str(o, "preallocation");
    if (s && co_prealloc_parse(s, &p->prealloc) < 0) {
        set_err(err, "invalid parameter value: %s", s);
        return -1;
    }

    p->backing_file = co_get_str(o, "backing_file");
    s = co_get_str(o, "encrypt.format");
    p->has_luks = s && strcmp(s, "luks") == 0;
    if (p->has_luks &&
        co_luks_params(o, "encrypt.", secret, secret_opaque, &p->luks, err) < 0)
        return -1;
    p->size = co_get_uint(o, "size", 0);
    return 0;
}

/* ---- --object ---- */

/* One "key=value" of a keyval string; ",," is a literal comma. */
struct kv {
    char key[64];
    char *value;
};

/* qemu's QOM identifiers: a letter, then letters, digits, '-', '.', '_'. */
static int is_identifier(const char *s)
{
    if (!isalpha((unsigned char)*s))
        return 0;
    for (s++; *s; s++)
        if (!isalnum((unsigned char)*s) && !strchr("-._", *s))
            return 0;
    return 1;
}

static const char *kv_get(const struct kv *kv, size_t n, const char *key)
{
    const char *v = NULL;
    size_t i;

    for (i = 0; i < n; i++)
        if (strcmp(kv[i].key, key) == 0)
            v = kv[i].value;
    return v;
}

int co_object_add(struct co_objects *objs, const char *def,
                  struct co_error *err)
{
    static const char *const known[] = {
        "qom-type", "id", "data", "file", "format", "keyid", "iv", "loaded",
        NULL,
    };
    struct kv kv[32];
    size_t n = 0, i;
    const char *p = def, *type, *id, *data, *file, *format;
    int rc = -1;

    while (*p) {
        size_t len = strcspn(p, "=,");

        if (n == sizeof(kv) / sizeof(kv[0]) || len >= sizeof(kv[0].key)) {
            set_err(err, "Invalid parameter '%.*s'", (int)len, p);
            goto out;
        }
        if (p[len] != '=') {
            /* Only the first element may leave out its key: qom-type. */
            if (n > 0 || len == 0) {
                set_err(err, n ? "Expected '=' after parameter '%.*s'"
                               : "Invalid parameter '%.*s'", (int)len, p);
                goto out;
            }
            snprintf(kv[n].key, sizeof(kv[n].key), "qom-type");
        } else {
            memcpy(kv[n].key, p, len);
            kv[n].key[len] = '\0';
            if (len == 0) {
                set_err(err, "Invalid parameter ''");
                goto out;
            }
            p += len + 1;
        }
        kv[n].value = take_value(&p);
        if (!kv[n].value) {
            set_err(err, "Out of memory");
            goto out;
        }
        n++;
        if (*p == ',')
            p++;
    }

    type = kv_get(kv, n, "qom-type");
    id = kv_get(kv, n, "id");
    data = kv_get(kv, n, "data");
    file = kv_get(kv, n, "file");
    format = kv_get(kv, n, "format");
    if (!type) {
        set_err(err, "Parameter 'qom-type' is missing");
        goto out;
    }
    if (strcmp(type, "secret") != 0) {
        set_err(err, "--object %s: only secret objects are supported", type);
        goto out;
    }
    if (!id) {
        set_err(err, "Parameter 'id' is missing");
        goto out;
    }
    if (!is_identifier(id)) {
        set_err(err, "Parameter 'id' expects an identifier");
        snprintf(err->hint, sizeof(err->hint), "Identifiers consist of "
                 "letters, digits, '-', '.', '_', starting with a letter.\n");
        goto out;
    }
    if (format && strcmp(format, "raw") != 0 && strcmp(format, "base64") != 0) {
        set_err(err, "Parameter 'format' does not accept value '%s'", format);
        goto out;
    }
    for (i = 0; i < n; i++) {
        size_t k;

        for (k = 0; known[k] && strcmp(known[k], kv[i].key) != 0; k++)
            ;
        if (!known[k]) {
            set_err(err, "Parameter '%s' is unexpected", kv[i].key);
            goto out;
        }
    }
    if (data && file) {
        set_err(err, "'file' and 'data' are mutually exclusive");
        goto out;
    }
    if (!data && !file) {
        set_err(err, "Either 'file' or 'data' must be provided");
        goto out;
    }
    if (file) {
        /* qemu reads the secret now; instar only needs to know it could. */
        FILE *f = fopen(file, "r");

        if (!f) {
            set_err(err, "Unable to read %s: Failed to open file \xe2\x80\x9c%s\xe2\x80\x9d: %s",
                    file, file, strerror(errno));
            goto out;
        }
        fclose(f);
    }
    for (i = 0; i < objs->n; i++) {
        if (strcmp(objs->id[i], id) == 0) {
            set_err(err, "attempt to add duplicate property '%s' to object "
                    "(type 'container')", id);
            goto out;
        }
    }
    if (objs->n == CO_MAX_OBJECTS) {
        set_err(err, "too many objects");
        goto out;
    }
    objs->id[objs->n] = strdup(id);
    if (!objs->id[objs->n]) {
        set_err(err, "Out of memory");
        goto out;
    }
    objs->n++;
    rc = 0;
out:
    for (i = 0; i < n; i++)
        free(kv[i].value);
    return rc;
}

void co_objects_free(struct co_objects *objs)
{
    size_t i;

    for (i = 0; i < objs->n; i++)
        free(objs->id[i]);
    objs->n = 0;
}

int co_secret_lookup(void *opaque, const char *id)
{
    const struct co_objects *objs = opaque;
    size_t i;

    for (i = 0; i < objs->n; i++)
        if (strcmp(objs->id[i], id) == 0)
            return 0;
    return -1;
}

/*
 * render.c - qemu-img's human and JSON layouts.
 *
 * qemu builds its JSON from a QDict, a 512-bucket hash table whose buckets
 * hold the newest member first, and prints it bucket by bucket.  The
 * format-specific part of the human output walks the same QDict.  To be
 * byte-identical we order members the same way: by qemu's hash bucket,
 * and within a bucket newest first (our trees keep insertion order, which
 * follows the QAPI schema as qemu's visitor does).
 */
#include "render.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

void render_size(char *buf, size_t len, uint64_t size, int ignore_quirks)
{
    static const char *const suffixes[] = { "", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei" };
    int exp;
    int i;
    uint64_t div;
    double v;

    /* The power of 1024 to use: switch up once the integer part would
     * reach 1000, as qemu does. */
    frexp((double)size / (1000.0 / 1024.0), &exp);
    i = (exp - 1) / 10;
    if (i < 0)
        i = 0;
    if (i > 6)
        i = 6;
    div = 1ULL << (i * 10);
    v = (double)size / (double)div;
    if (!ignore_quirks) {
        snprintf(buf, len, "%0.3g %sB", v, suffixes[i]);
    } else if (v == floor(v)) {
        snprintf(buf, len, "%.0f %sB", v, suffixes[i]);
    } else {
        snprintf(buf, len, "%.1f %sB", floor(v * 10 + 0.5) / 10, suffixes[i]);
    }
}

unsigned render_qdict_bucket(const char *key)
{
    uint32_t value = 0x238F13AFu * (uint32_t)strlen(key);
    unsigned i;

    for (i = 0; key[i]; i++)
        value = value + ((uint32_t)(unsigned char)key[i] << (i * 5 % 24));
    return (1103515243u * value + 12345u) % 512u;
}

/* Members of a dict in qemu's iteration order; caller frees. */
static const struct tree **qdict_order(const struct tree *dict, size_t *n)
{
    const struct tree **v;
    const struct tree *k;
    size_t count = dict->v.kids.count, i = 0, a, b;

    *n = 0;
    v = malloc((count ? count : 1) * sizeof(*v));
    if (!v)
        return NULL;
    for (k = dict->v.kids.first; k && i < count; k = k->next)
        v[i++] = k;
    count = i;
    /* Insertion sort: bucket ascending, later insertion first.  Dicts are
     * small. */
    for (a = 1; a < count; a++) {
        const struct tree *cur = v[a];
        unsigned cb = render_qdict_bucket(cur->key);

        b = a;
        while (b > 0 && render_qdict_bucket(v[b - 1]->key) >= cb) {
            v[b] = v[b - 1];
            b--;
        }
        v[b] = cur;
    }
    *n = count;
    return v;
}

/* qemu's JSON string escaping: ASCII controls, DEL and everything
 * non-ASCII as \uXXXX (surrogate pairs beyond the BMP), invalid UTF-8 as
 * U+FFFD. */
static int utf8_decode(const unsigned char *s, size_t *used)
{
    unsigned c = s[0], cp, need, i, min;

    if (c < 0x80) {
        *used = 1;
        return (int)c;
    }
    if ((c & 0xE0) == 0xC0) { need = 1; cp = c & 0x1F; min = 0x80; }
    else if ((c & 0xF0) == 0xE0) { need = 2; cp = c & 0x0F; min = 0x800; }
    else if ((c & 0xF8) == 0xF0) { need = 3; cp = c & 0x07; min = 0x10000; }
    else { *used = 1; return -1; }
    for (i = 1; i <= need; i++) {
        if ((s[i] & 0xC0) != 0x80) {
            *used = i;
            return -1;
        }
        cp = cp << 6 | (s[i] & 0x3F);
    }
    *used = need + 1;
    /* Modified UTF-8 lets C0 80 stand for NUL. */
    if (cp < min && !(need == 1 && cp == 0))
        return -1;
    if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
        return -1;
    return (int)cp;
}

static void json_string(FILE *out, const char *s)
{
    const unsigned char *p = (const unsigned char *)s;

    fputc('"', out);
    while (*p) {
        size_t used;
        int cp = utf8_decode(p, &used);

        p += used;
        switch (cp) {
        case '"': fputs("\\\"", out); break;
        case '\\': fputs("\\\\", out); break;
        case '\b': fputs("\\b", out); break;
        case '\f': fputs("\\f", out); break;
        case '\n': fputs("\\n", out); break;
        case '\r': fputs("\\r", out); break;
        case '\t': fputs("\\t", out); break;
        default:
            if (cp < 0)
                cp = 0xFFFD;
            if (cp > 0xFFFF)
                fprintf(out, "\\u%04X\\u%04X", 0xD800 + ((cp - 0x10000) >> 10),
                        0xDC00 + ((cp - 0x10000) & 0x3FF));
            else if (cp < 0x20 || cp >= 0x7F)
                fprintf(out, "\\u%04X", cp);
            else
                fputc(cp, out);
        }
    }
    fputc('"', out);
}

static void indent(FILE *out, int level)
{
    int i;

    for (i = 0; i < level * 4; i++)
        fputc(' ', out);
}

static void json_value(FILE *out, const struct tree *t, int level)
{
    size_t n, i;

    switch (t->type) {
    case TREE_BOOL:
        fputs(t->v.b ? "true" : "false", out);
        break;
    case TREE_INT:
        fprintf(out, "%lld", (long long)t->v.i);
        break;
    case TREE_UINT:
        fprintf(out, "%llu", (unsigned long long)t->v.u);
        break;
    case TREE_STR:
        json_string(out, t->v.str.s);
        break;
    case TREE_BLOB:
        fputs("\"\"", out);       /* never part of qemu's output */
        break;
    case TREE_DICT: {
        const struct tree **m = qdict_order(t, &n);

        fputc('{', out);
        for (i = 0; m && i < n; i++) {
            if (i)
                fputc(',', out);
            fputc('\n', out);
            indent(out, level + 1);
            json_string(out, m[i]->key);
            fputs(": ", out);
            json_value(out, m[i], level + 1);
        }
        fputc('\n', out);
        indent(out, level);
        fputc('}', out);
        free(m);
        break;
    }
    case TREE_LIST: {
        const struct tree *k;

        fputc('[', out);
        for (k = t->v.kids.first, i = 0; k; k = k->next, i++) {
            if (i)
                fputc(',', out);
            fputc('\n', out);
            indent(out, level + 1);
            json_value(out, k, level + 1);
        }
        fputc('\n', out);
        indent(out, level);
        fputc(']', out);
        break;
    }
    }
}

void render_json(FILE *out, const struct tree *t)
{
    json_value(out, t, 0);
}

void render_info_json(FILE *out, const struct tree *info)
{
    render_json(out, info);
    fputc('\n', out);
}

/* ---- human ---- */

static void dump_value(FILE *out, const struct tree *t, int level);

static int is_composite(const struct tree *t)
{
    return t->type == TREE_DICT || t->type == TREE_LIST;
}

static void dump_scalar(FILE *out, const struct tree *t)
{
    switch (t->type) {
    case TREE_BOOL: fputs(t->v.b ? "true" : "false", out); break;
    case TREE_INT: fprintf(out, "%lld", (long long)t->v.i); break;
    case TREE_UINT: fprintf(out, "%llu", (unsigned long long)t->v.u); break;
    case TREE_STR: fputs(t->v.str.s, out); break;
    default: break;
    }
}

static void dump_dict(FILE *out, const struct tree *d, int level)
{
    size_t n, i;
    const struct tree **m = qdict_order(d, &n);

    for (i = 0; m && i < n; i++) {
        const char *k;

        fprintf(out, "%*s", level * 4, "");
        for (k = m[i]->key; *k; k++)
            fputc(*k == '-' ? ' ' : *k, out);
        fputs(is_composite(m[i]) ? ":\n" : ": ", out);
        dump_value(out, m[i], level + 1);
        if (!is_composite(m[i]))
            fputc('\n', out);
    }
    free(m);
}

static void dump_list(FILE *out, const struct tree *l, int level)
{
    const struct tree *k;
    int i = 0;

    for (k = l->v.kids.first; k; k = k->next, i++) {
        fprintf(out, is_composite(k) ? "%*s[%i]:\n" : "%*s[%i]: ",
                level * 4, "", i);
        dump_value(out, k, level + 1);
        if (!is_composite(k))
            fputc('\n', out);
    }
}

static void dump_value(FILE *out, const struct tree *t, int level)
{
    if (t->type == TREE_DICT)
        dump_dict(out, t, level);
    else if (t->type == TREE_LIST)
        dump_list(out, t, level);
    else
        dump_scalar(out, t);
}

static int64_t get_int(const struct tree *d, const char *key, int *present)
{
    return tree_get_int(d, key, present);
}

static void snapshot_header(FILE *out, const struct profile *prof)
{
    if (profile_at_least(prof, 9, 0))
        fprintf(out, "%-7s %-16s %8s %19s %15s %10s", "ID", "TAG", "VM_SIZE",
                "DATE", "VM_CLOCK", "ICOUNT");
    else
        fprintf(out, "%-10s%-17s%8s%20s%13s%11s", "ID", "TAG", "VM SIZE",
                "DATE", "VM CLOCK", "ICOUNT");
}

static void snapshot_row(FILE *out, const struct tree *sn,
                         const struct profile *prof, int ignore_quirks)
{
    char date[64] = "", clock_buf[64], size_buf[64], icount_buf[32] = "";
    const char *id = tree_get_str(sn, "id"), *name = tree_get_str(sn, "name");
    int ok;
    int64_t date_sec = get_int(sn, "date-sec", &ok);
    int64_t clock_sec = get_int(sn, "vm-clock-sec", &ok);
    int64_t clock_nsec = get_int(sn, "vm-clock-nsec", &ok);
    int64_t vmsize = get_int(sn, "vm-state-size", &ok);
    int64_t icount = get_int(sn, "icount", &ok);
    uint64_t total_ns, secs;
    time_t ti = (time_t)date_sec;
    struct tm tm;

    if (localtime_r(&ti, &tm))
        strftime(date, sizeof(date), "%Y-%m-%d %H:%M:%S", &tm);
    total_ns = (uint64_t)clock_sec * 1000000000u + (uint64_t)clock_nsec;
    secs = total_ns / 1000000000u;
    if (profile_at_least(prof, 9, 0))
        snprintf(clock_buf, sizeof(clock_buf), "%04d:%02d:%02d.%03d",
                 (int)(secs / 3600), (int)((secs / 60) % 60), (int)(secs % 60),
                 (int)((total_ns / 1000000) % 1000));
    else
        snprintf(clock_buf, sizeof(clock_buf), "%02d:%02d:%02d.%03d",
                 (int)(secs / 3600), (int)((secs / 60) % 60), (int)(secs % 60),
                 (int)((total_ns / 1000000) % 1000));
    render_size(size_buf, sizeof(size_buf), (uint64_t)vmsize, ignore_quirks);
    if (ok)
        snprintf(icount_buf, sizeof(icount_buf), "%lld", (long long)icount);
    else if (profile_at_least(prof, 9, 0))
        snprintf(icount_buf, sizeof(icount_buf), "--");
    if (profile_at_least(prof, 9, 0))
        fprintf(out, "%-7s %-16s %8s %19s %15s %10s", id ? id : "",
                name ? name : "", size_buf, date, clock_buf, icount_buf);
    else
        fprintf(out, "%-9s %-16s %8s%20s%13s%11s", id ? id : "",
                name ? name : "", size_buf, date, clock_buf, icount_buf);
}

static int dump_is_empty(const struct tree *t)
{
    return t && is_composite(t) && t->v.kids.count == 0;
}

/* One node: qemu's bdrv_node_info_dump (8.0+) / bdrv_image_info_dump. */
static void dump_node(FILE *out, const struct tree *info, int level,
                      int protocol, const struct profile *prof,
                      int ignore_quirks)
{
    char vsize[64], dsize[64];
    const char *filename = tree_get_str(info, "filename");
    const char *format = tree_get_str(info, "format");
    const char *backing = tree_get_str(info, "backing-filename");
    const char *full = tree_get_str(info, "full-backing-filename");
    const char *bfmt = tree_get_str(info, "backing-filename-format");
    const struct tree *t, *snaps, *spec;
    int has_actual, ok;
    int64_t actual = get_int(info, "actual-size", &has_actual);
    int64_t virt = get_int(info, "virtual-size", &ok);
    int ind = level * 4;

    render_size(vsize, sizeof(vsize), (uint64_t)virt, ignore_quirks);
    if (has_actual)
        render_size(dsize, sizeof(dsize), (uint64_t)actual, ignore_quirks);
    else
        snprintf(dsize, sizeof(dsize), "unavailable");
    fprintf(out, "%*s%s: %s\n", ind, "", protocol ? "filename" : "image",
            filename ? filename : "");
    fprintf(out, "%*s%s: %s\n", ind, "", protocol ? "protocol type" : "file format",
            format ? format : "");
    fprintf(out, "%*s%s: %s (%lld bytes)\n", ind, "",
            protocol ? "file length" : "virtual size", vsize, (long long)virt);
    fprintf(out, "%*sdisk size: %s\n", ind, "", dsize);
    t = tree_get(info, "encrypted");
    if (t && t->type == TREE_BOOL && t->v.b)
        fprintf(out, "%*sencrypted: yes\n", ind, "");
    {
        int64_t cs = get_int(info, "cluster-size", &ok);
        if (ok)
            fprintf(out, "%*scluster_size: %lld\n", ind, "", (long long)cs);
    }
    t = tree_get(info, "dirty-flag");
    if (t && t->type == TREE_BOOL && t->v.b)
        fprintf(out, "%*scleanly shut down: no\n", ind, "");
    if (backing) {
        fprintf(out, "%*sbacking file: %s", ind, "", backing);
        if (!full)
            fputs(" (cannot determine actual path)", out);
        else if (strcmp(backing, full) != 0)
            fprintf(out, " (actual path: %s)", full);
        fputc('\n', out);
        if (bfmt)
            fprintf(out, "%*sbacking file format: %s\n", ind, "", bfmt);
    }
    snaps = tree_get(info, "snapshots");
    if (snaps && snaps->type == TREE_LIST) {
        fprintf(out, "%*sSnapshot list:\n", ind, "");
        fprintf(out, "%*s", ind, "");
        snapshot_header(out, prof);
        fputc('\n', out);
        for (t = snaps->v.kids.first; t; t = t->next) {
            if (t->type != TREE_DICT)
                continue;
            fprintf(out, "%*s", ind, "");
            snapshot_row(out, t, prof, ignore_quirks);
            fputc('\n', out);
        }
    }
    spec = tree_get(info, "format-specific");
    if (spec && spec->type == TREE_DICT) {
        const struct tree *data = tree_get(spec, "data");

        /* 8.0 and later skip an empty section; 7.2 prints the heading. */
        if (data && (!profile_at_least(prof, 8, 0) || !dump_is_empty(data))) {
            fprintf(out, "%*sFormat specific information:\n", ind, "");
            dump_value(out, data, level + 1);
        }
    }
}

static void dump_graph(FILE *out, const struct tree *info, int level,
                       const char *path, const struct profile *prof,
                       int ignore_quirks)
{
    const struct tree *children = tree_get(info, "children");
    const struct tree *c;
    int has_children = children && children->type == TREE_LIST &&
                       children->v.kids.count > 0;

    dump_node(out, info, level, !has_children && level > 0, prof, ignore_quirks);
    if (!has_children)
        return;
    for (c = children->v.kids.first; c; c = c->next) {
        const char *name = tree_get_str(c, "name");
        const struct tree *cinfo = tree_get(c, "info");
        char *child_path;
        size_t len;

        if (!name || !cinfo || cinfo->type != TREE_DICT)
            continue;
        fprintf(out, "%*sChild node '%s%s':\n", level * 4, "", path, name);
        len = strlen(path) + strlen(name) + 2;
        child_path = malloc(len);
        if (!child_path)
            return;
        snprintf(child_path, len, "%s%s/", path, name);
        dump_graph(out, cinfo, level + 1, child_path, prof, ignore_quirks);
        free(child_path);
    }
}

void render_info_human(FILE *out, const struct tree *info,
                       const struct profile *prof, int ignore_quirks)
{
    dump_graph(out, info, 0, "/", prof, ignore_quirks);
}

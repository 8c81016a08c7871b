/*
 * test_writers.c - the vmdk, vpc, vhdx and vdi writers on real temporary
 * files: each case creates an image, writes a pattern with holes, and
 * checks the result with qemu-img (check, compare against a raw copy).
 *
 * Also a debugging tool: `test_writers convert FMT IN.raw OUT [k=v...]`
 * writes IN's non-zero granules into a new image (no sandbox; extra vmdk
 * extent files are created next to OUT).
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "engine/writer.h"
#include "worker/worker.h"
#include "host/targets.h"

extern struct ins_alloc ins_libc_alloc;

static int no_refs(struct ins_ctx *ctx, enum ins_ref_kind kind,
                   const char *base, const char *name, struct ins_bdev **out)
{
    (void)kind; (void)base; (void)name; (void)out;
    return ins_error(ctx, INS_EREFUSED, "no references in unit tests");
}

/* "k=v,k2=v2" -> options dict (numbers as UINT, on/off as BOOL). */
static struct tree *parse_opts(struct tree_builder *tb, char **kv, int n)
{
    struct tree *d = tree_new_dict(tb);

    for (int i = 0; i < n; i++) {
        char buf[256], *eq, *end;
        unsigned long long u;

        snprintf(buf, sizeof(buf), "%s", kv[i]);
        eq = strchr(buf, '=');
        if (!eq)
            continue;
        *eq++ = 0;
        u = strtoull(eq, &end, 0);
        if (strstr(buf, "version"))         /* string options */
            tree_put_str(tb, d, buf, eq);
        else if (*eq && !*end)
            tree_put_uint(tb, d, buf, u);
        else if (strcmp(eq, "on") == 0 || strcmp(eq, "off") == 0)
            tree_put_bool(tb, d, buf, strcmp(eq, "on") == 0);
        else
            tree_put_str(tb, d, buf, eq);
    }
    return d;
}

struct target {
    int fd[1100];
    struct ins_bdev bd[1100];
    struct ins_bdev *extra[1100];
    char *names[1100];
    size_t n;
};

static int open_target(struct target *t, const char *fmt, const char *path,
                       const struct tree *opts, uint64_t size)
{
    char **names = NULL, err[256], dir[1024], full[2048];
    size_t n = 0;
    const char *slash = strrchr(path, '/');

    if (target_extra_files(fmt, opts, path, size, &names, &n, err,
                           sizeof(err)) < 0) {
        fprintf(stderr, "extra files: %s\n", err);
        return -1;
    }
    snprintf(dir, sizeof(dir), "%.*s", slash ? (int)(slash - path + 1) : 0,
             path);
    t->fd[0] = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    worker_bdev_init(&t->bd[0], t->fd[0], path);
    for (size_t i = 0; i < n && i + 1 < 1100; i++) {
        snprintf(full, sizeof(full), "%s%s", dir, names[i]);
        t->fd[i + 1] = open(full, O_RDWR | O_CREAT | O_TRUNC, 0644);
        t->names[i] = strdup(names[i]);
        worker_bdev_init(&t->bd[i + 1], t->fd[i + 1], t->names[i]);
        t->extra[i] = &t->bd[i + 1];
    }
    t->n = n;
    targets_free(names, n);
    return 0;
}

static void close_target(struct target *t)
{
    for (size_t i = 0; i <= t->n; i++) {
        close(t->fd[i]);
        free(t->bd[i].opaque);      /* the worker never frees these */
    }
    for (size_t i = 0; i < t->n; i++)
        free(t->names[i]);
}

static int all_zero(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i])
            return 0;
    return 1;
}

/* Writes data (size bytes) into a new image; 0 or -1. */
static int write_image(const char *fmt, const char *path, char **kv, int nkv,
                       const uint8_t *data, uint64_t size, int compress)
{
    const struct ins_writer *wr = ins_find_writer(fmt);
    struct ins_ctx ctx;
    struct tree_builder tb;
    struct ins_create cr;
    struct ins_wimage *w = NULL;
    struct target *t = calloc(1, sizeof(*t));
    uint64_t gran, off;
    int rc;

    if (!wr || !t) {
        fprintf(stderr, "no writer for %s\n", fmt);
        free(t);
        return -1;
    }
    memset(&ctx, 0, sizeof(ctx));
    ctx.alloc = &ins_libc_alloc;
    ctx.open_ref = no_refs;
    tree_builder_init(&tb, &ins_libc_alloc);
    memset(&cr, 0, sizeof(cr));
    cr.size = size;
    cr.opts = parse_opts(&tb, kv, nkv);
    for (size_t i = 0; i < sizeof(cr.random); i++)
        cr.random[i] = (uint8_t)rand();
    cr.now_unix = (uint64_t)time(NULL);
    if (open_target(t, fmt, path, cr.opts, size) < 0) {
        free(t);
        return -1;
    }
    cr.extra = t->extra;
    cr.n_extra = t->n;
    rc = wr->create(&ctx, &t->bd[0], &cr, &w);
    if (rc) {
        fprintf(stderr, "create: %s\n", ctx.errmsg);
        goto out;
    }
    gran = w->granularity;
    for (off = 0; off < w->virtual_size && off < size; off += gran) {
        size_t n = (size_t)(w->virtual_size - off < gran ?
                            w->virtual_size - off : gran);
        uint8_t cbuf[1 << 17];
        size_t clen;

        if (n > size - off)
            n = (size_t)(size - off);
        if (all_zero(data + off, n))
            continue;
        if (compress && wr->compress && n == gran &&
            wr->compress(w, data + off, n, cbuf, sizeof(cbuf), &clen) == 0)
            rc = wr->write_compressed(w, cbuf, clen, off);
        else
            rc = wr->write(w, data + off, n, off);
        if (rc) {
            fprintf(stderr, "write at %llu: %s\n", (unsigned long long)off,
                    ctx.errmsg);
            goto out;
        }
    }
    rc = wr->finish(w);
    if (rc)
        fprintf(stderr, "finish: %s\n", ctx.errmsg);
out:
    if (w)
        wr->close(w);
    close_target(t);
    free(t);
    tree_free(&ins_libc_alloc, (struct tree *)cr.opts);
    return rc ? -1 : 0;
}

static int run(const char *cmd)
{
    int rc = system(cmd);

    if (rc != 0)
        fprintf(stderr, "failed (%d): %s\n", rc, cmd);
    return rc;
}

static uint8_t *read_file(const char *path, uint64_t *size)
{
    FILE *f = fopen(path, "rb");
    uint8_t *buf;
    long n;

    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    n = ftell(f);
    fseek(f, 0, SEEK_SET);
    buf = calloc(1, (size_t)n + 1);
    if (fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    *size = (uint64_t)n;
    return buf;
}

/* One case: pattern -> image -> qemu-img check + compare. */
static void one_case(const char *dir, const char *fmt, const char *opts,
                     uint64_t size, int checkable, int compress)
{
    char raw[512], img[512], cmd[2048], optbuf[256], *kv[16];
    uint8_t *data = calloc(1, (size_t)size);
    int nkv = 0;
    FILE *f;

    /* Data at the start, in the middle of a block, at the very end. */
    for (uint64_t i = 0; i < 70000 && i < size; i++)
        data[i] = (uint8_t)(i * 7 + 1);
    for (uint64_t i = size / 2; i < size / 2 + 4096 && i < size; i++)
        data[i] = 0x5a;
    for (uint64_t i = size > 512 ? size - 512 : 0; i < size; i++)
        data[i] = 0xa5;
    snprintf(raw, sizeof(raw), "%s/src.raw", dir);
    snprintf(img, sizeof(img), "%s/out.%s", dir, fmt);
    f = fopen(raw, "wb");
    fwrite(data, 1, (size_t)size, f);
    fclose(f);
    snprintf(optbuf, sizeof(optbuf), "%s", opts);
    for (char *tok = strtok(optbuf, ","); tok && nkv < 16; tok = strtok(NULL, ","))
        kv[nkv++] = tok;

    fprintf(stderr, "-- %s %s size=%llu%s\n", fmt, opts,
            (unsigned long long)size, compress ? " compressed" : "");
    CHECK(write_image(fmt, img, kv, nkv, data, size, compress) == 0);
    if (checkable) {
        snprintf(cmd, sizeof(cmd), "qemu-img check -q -f %s %s", fmt, img);
        CHECK(run(cmd) == 0);
    }
    snprintf(cmd, sizeof(cmd), "qemu-img compare -q -f raw -F %s %s %s", fmt,
             raw, img);
    CHECK(run(cmd) == 0);
    free(data);
}

/* A create that must fail with qemu's message. */
static void create_fails(const char *dir, const char *fmt, const char *opts,
                         uint64_t size, const char *want)
{
    const struct ins_writer *wr = ins_find_writer(fmt);
    char path[512], optbuf[256], *kv[16];
    struct ins_ctx ctx;
    struct tree_builder tb;
    struct ins_create cr;
    struct ins_wimage *w = NULL;
    struct ins_bdev bd;
    int nkv = 0, fd;

    snprintf(path, sizeof(path), "%s/fail.%s", dir, fmt);
    snprintf(optbuf, sizeof(optbuf), "%s", opts);
    for (char *tok = strtok(optbuf, ","); tok && nkv < 16; tok = strtok(NULL, ","))
        kv[nkv++] = tok;
    memset(&ctx, 0, sizeof(ctx));
    ctx.alloc = &ins_libc_alloc;
    ctx.open_ref = no_refs;
    tree_builder_init(&tb, &ins_libc_alloc);
    memset(&cr, 0, sizeof(cr));
    cr.size = size;
    cr.opts = parse_opts(&tb, kv, nkv);
    fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    worker_bdev_init(&bd, fd, path);
    CHECK(wr && wr->create(&ctx, &bd, &cr, &w) < 0);
    CHECK_STR(ctx.errmsg, want);
    close(fd);
    free(bd.opaque);
    tree_free(&ins_libc_alloc, (struct tree *)cr.opts);
}

static int convert_main(int argc, char **argv)
{
    uint64_t size;
    uint8_t *data;
    int compress = 0, rc;

    if (argc < 5) {
        fprintf(stderr, "usage: test_writers convert [-c] FMT IN OUT [k=v...]\n");
        return 2;
    }
    if (strcmp(argv[2], "-c") == 0) {
        compress = 1;
        argv++;
        argc--;
    }
    data = read_file(argv[3], &size);
    if (!data) {
        perror(argv[3]);
        return 1;
    }
    srand((unsigned)time(NULL) ^ (unsigned)getpid());
    rc = write_image(argv[2], argv[4], argv + 5, argc - 5, data, size, compress);
    free(data);
    return rc ? 1 : 0;
}

int main(int argc, char **argv)
{
    char dir[] = "/tmp/instar-writers-XXXXXX", cmd[600];

    if (argc > 1 && strcmp(argv[1], "convert") == 0)
        return convert_main(argc, argv);
    if (!mkdtemp(dir))
        return 1;
    if (system("qemu-img --version >/dev/null 2>&1") != 0) {
        printf("test_writers: qemu-img missing, skipped\n");
        return 0;
    }
    one_case(dir, "vpc", "", 5 << 20, 0, 0);
    one_case(dir, "vpc", "subformat=fixed", 5 << 20, 0, 0);
    one_case(dir, "vpc", "force_size=on", 5 << 20, 0, 0);
    one_case(dir, "vdi", "", 5 << 20, 1, 0);
    one_case(dir, "vdi", "static=on", 3 << 20, 1, 0);
    one_case(dir, "vmdk", "", 5 << 20, 1, 0);
    one_case(dir, "vmdk", "subformat=streamOptimized", 5 << 20, 1, 1);
    one_case(dir, "vmdk", "subformat=streamOptimized", 5 << 20, 1, 0);
    one_case(dir, "vmdk", "subformat=monolithicFlat", 5 << 20, 1, 0);
    one_case(dir, "vmdk", "subformat=twoGbMaxExtentSparse", 5 << 20, 1, 0);
    one_case(dir, "vmdk", "subformat=twoGbMaxExtentFlat", 5 << 20, 1, 0);
    one_case(dir, "vmdk", "zeroed_grain=on,adapter_type=lsilogic", 5 << 20, 1, 0);
    one_case(dir, "vhdx", "", 5 << 20, 1, 0);
    one_case(dir, "vhdx", "subformat=fixed", 5 << 20, 1, 0);
    one_case(dir, "vhdx", "subformat=fixed,block_state_zero=off", 5 << 20, 1, 0);
    one_case(dir, "vhdx", "block_size=1048576,log_size=2097152,block_state_zero=off", 5 << 20, 1, 0);
    create_fails(dir, "vpc", "subformat=foo", 1 << 20,
                 "Parameter 'subformat' does not accept value 'foo'");
    create_fails(dir, "vpc", "force_size=on", 3000ull << 30,
                 "Disk size is too large, max size is 2040 GiB");
    create_fails(dir, "vhdx", "block_size=3145728", 1 << 20,
                 "Block size must be a power of two");
    create_fails(dir, "vhdx", "log_size=5368709120", 1 << 20,
                 "Log size must be smaller than 4 GB");
    create_fails(dir, "vhdx", "", 65ull << 40,
                 "Image size too large; max of 64TB");
    create_fails(dir, "vmdk", "adapter_type=scsi", 1 << 20,
                 "invalid parameter value: scsi");
    create_fails(dir, "vmdk", "compat6=on,hwversion=7", 1 << 20,
                 "compat6 cannot be enabled with hwversion set");
    create_fails(dir, "vmdk", "subformat=monolithicFlat,zeroed_grain=on",
                 1 << 20, "Flat image can't enable zeroed grain");
    create_fails(dir, "vmdk", "subformat=twoGbMaxExtentFlat", 1 << 20,
                 "vmdk twoGbMaxExtentFlat needs 1 extent files, got 0");
    create_fails(dir, "vdi", "preallocation=metadata", 1 << 20,
                 "Unsupported preallocation mode: metadata");
    create_fails(dir, "vdi", "", 1ull << 60,
                 "Unsupported VDI image size (size is 0x1000000000000000, "
                 "max supported is 0x1fffff8000000)");
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    CHECK(system(cmd) == 0);
    return check_report("test_writers");
}

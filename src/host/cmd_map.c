/*
 * cmd_map.c - `map`: qemu-img map's human table or JSON list, streamed as
 * the worker walks the image.
 */
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "jobs.h"

static const char map_help[] =
    "Usage: %s map [-f FMT] [--output=human|json] [--start-offset=OFFSET]\n"
    "              [--max-length=LENGTH] [-U] FILE\n"
    "\n"
    "Show how the guest-visible disk of FILE maps onto files, as qemu-img map\n"
    "does: allocated, zero and unallocated ranges, through the backing chain.\n"
    "Backing files are opened only under the allowed directories.\n"
    "\n"
    "  -f, --format=FMT       the image format (default: detect)\n"
    "  --output=human|json    output format (default human)\n"
    "  -s, --start-offset=N   start at guest offset N\n"
    "  -l, --max-length=N     map at most N bytes\n"
    "  -U, --force-share      accepted for compatibility\n"
    "\n"
    "See 'instar info --help' for instar's own options.\n";

struct map_job {
    struct image_job image;
    uint64_t start;
    int64_t max_length;
    int human;
    int with_compressed;
};

static int map_job_run(struct ins_ctx *ctx, void *opaque, const int *fds,
                       size_t nfds, struct tree_builder *tb, struct tree **out)
{
    struct map_job *job = opaque;
    struct ins_image *img;
    int rc;

    if (nfds < 1)
        return ins_error(ctx, INS_EINVAL, "no image");
    /* Once the image is open, qemu prints the heading. */
    rc = job_open_image_announced(ctx, &job->image, fds[0], tb, &img);
    if (rc < 0)
        return rc;
    rc = ins_op_map(ctx, img, job->start, job->max_length, job->human,
                    job->with_compressed);
    if (rc < 0)
        return rc;
    *out = tree_new_dict(tb);
    return tb->failed ? ins_error(ctx, INS_ENOMEM, "Out of memory") : INS_OK;
}

struct map_render {
    const struct options *o;
    int json;
    int with_compressed;
    int opened;
    size_t printed;
};

static void print_heading(struct map_render *mr)
{
    if (mr->json)
        putchar('[');
    else
        printf("%-16s%-16s%-16s%s\n", "Offset", "Length", "Mapped to", "File");
}

static uint64_t get_le64(const uint8_t *p)
{
    uint64_t v = 0;
    int i;

    for (i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

/* Appends text; the line buffer is sized for the longest entry. */
static char *put_str(char *p, const char *s)
{
    while (*s)
        *p++ = *s++;
    return p;
}

/* Decimal, as printf's PRId64 (map entries are printed by the hundred
 * thousand: printf was most of map's time). */
static char *put_i64(char *p, int64_t v)
{
    char tmp[24];
    uint64_t u = v < 0 ? 0 - (uint64_t)v : (uint64_t)v;
    int n = 0;

    do {
        tmp[n++] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0)
        *p++ = '-';
    while (n)
        *p++ = tmp[--n];
    return p;
}

static char *put_bool(char *p, const char *key, int b)
{
    p = put_str(p, key);
    return put_str(p, b ? "true" : "false");
}

static void print_entry(struct map_render *mr, const uint8_t *rec,
                        const char *name)
{
    uint64_t start = get_le64(rec), length = get_le64(rec + 8);
    int64_t depth = (int64_t)get_le64(rec + 16);
    uint64_t offset = get_le64(rec + 24);
    unsigned flags = rec[40];
    char line[256], *p = line;

    if (mr->json) {
        if (mr->printed)
            p = put_str(p, ",\n");
        p = put_str(p, "{ \"start\": ");
        p = put_i64(p, (int64_t)start);
        p = put_str(p, ", \"length\": ");
        p = put_i64(p, (int64_t)length);
        p = put_str(p, ", \"depth\": ");
        p = put_i64(p, depth);
        p = put_bool(p, ", \"present\": ", flags & MAPF_PRESENT);
        p = put_bool(p, ", \"zero\": ", flags & MAPF_ZERO);
        p = put_bool(p, ", \"data\": ", flags & MAPF_DATA);
        if (mr->with_compressed)
            p = put_bool(p, ", \"compressed\": ", flags & MAPF_COMPRESSED);
        if (flags & MAPF_HAS_OFFSET) {
            p = put_str(p, ", \"offset\": ");
            p = put_i64(p, (int64_t)offset);
        }
        *p++ = '}';
        fwrite(line, 1, (size_t)(p - line), stdout);
    } else {
        printf("%#-16" PRIx64 "%#-16" PRIx64 "%#-16" PRIx64 "%s\n", start, length,
               (flags & MAPF_HAS_OFFSET) ? offset : 0, name ? name : "");
    }
    mr->printed++;
}

/* One batch from the worker; every field is checked before use. */
static int map_partial(void *opaque, const struct tree *part)
{
    struct map_render *mr = opaque;
    const struct tree *files, *records, *f;
    const char *names[4096];
    size_t n_names = 0, i;

    if (part->type != TREE_DICT)
        return -1;
    if (tree_get(part, "opened")) {
        if (!mr->opened)
            print_heading(mr);
        mr->opened = 1;
        return 0;
    }
    files = tree_get(part, "files");
    records = tree_get(part, "records");
    if (!mr->opened || !files || files->type != TREE_LIST || !records ||
        records->type != TREE_BLOB || records->v.str.len % MAP_RECORD_SIZE)
        return -1;
    for (f = files->v.kids.first; f; f = f->next) {
        if (f->type != TREE_STR || n_names >= sizeof(names) / sizeof(names[0]))
            return -1;
        names[n_names++] = f->v.str.s;
    }
    for (i = 0; i < records->v.str.len; i += MAP_RECORD_SIZE) {
        const uint8_t *rec = (const uint8_t *)records->v.str.s + i;
        int64_t idx = (int64_t)get_le64(rec + 32);

        if (idx < -1 || idx >= (int64_t)n_names)
            return -1;
        print_entry(mr, rec, idx >= 0 ? names[idx] : NULL);
    }
    return 0;
}

int cmd_map(struct options *o, int argc, char **argv)
{
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "format", required_argument, NULL, 'f' },
        { "output", required_argument, NULL, 'O' },
        { "object", required_argument, NULL, 'o' },
        { "image-opts", no_argument, NULL, 'I' },
        { "force-share", no_argument, NULL, 'U' },
        { "start-offset", required_argument, NULL, 's' },
        { "max-length", required_argument, NULL, 'l' },
        { NULL, 0, NULL, 0 },
    };
    struct map_job job;
    struct map_render mr;
    struct policy pol;
    struct tree *t;
    const char *format = NULL, *filename;
    struct job_error err;
    int json = 0, c, fd;
    int64_t start = 0, max_length = -1;

    optind = 0;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":f:s:l:hU", longopts, NULL)) != -1) {
        switch (c) {
        case 'h':
            printf(map_help, o->progname);
            return 0;
        case 'f':
            format = optarg;
            break;
        case 'O':
            if (parse_output_format(o, "map", optarg, &json) < 0)
                return 1;
            break;
        case 's':
            start = parse_size_arg(o, "start offset", optarg);
            if (start < 0)
                return 1;
            break;
        case 'l':
            max_length = parse_size_arg(o, "max length", optarg);
            if (max_length < 0)
                return 1;
            break;
        case 'o':
        case 'U':
            break;
        case 'I':
            refuse_image_opts(o);
            return 1;
        default:
            return option_error(o, "map", c, argv[optind - 1]);
        }
    }
    fd = host_open_single(o, "map", argc, argv, format, &filename, &pol);
    if (fd < 0)
        return 1;

    memset(&job, 0, sizeof(job));
    job.image.filename = filename;
    job.image.format = format;
    job.start = (uint64_t)start;
    job.max_length = max_length;
    job.human = !json;
    job.with_compressed = profile_at_least(&o->prof, 8, 0);
    memset(&mr, 0, sizeof(mr));
    /* Large writes: map output can run to many megabytes. */
    setvbuf(stdout, NULL, _IOFBF, 1 << 20);
    mr.o = o;
    mr.json = json;
    mr.with_compressed = job.with_compressed;

    t = host_run_job(o, &pol, map_job_run, &job, &fd, 1, map_partial, &mr, &err);
    close(fd);
    policy_forget(&pol);
    if (!t) {
        fflush(stdout);
        if (!mr.opened)
            host_report_open_error(o, filename, &err);
        else if (err.status == INS_ENOTSUP || err.plain)
            die_msg(o, "%s", err.msg);
        else
            die_msg(o, "Could not read file metadata: %s", ins_strerror(err.status));
        return 1;
    }
    tree_free(&ins_libc_alloc, t);
    if (json)
        puts("]");
    return 0;
}

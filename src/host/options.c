/*
 * options.c - global options, environment and config file.
 *
 * Precedence: command line, then environment (INSTAR_QEMU_VERSION), then
 * the config file ($INSTAR_CONFIG, else /etc/instar/instar.conf), then
 * the defaults: the newest qemu-img layout, 1 GiB and 60 s per worker,
 * backing chains at most 16 deep, references only beside the image.
 *
 * Config file lines are "key = value"; '#' starts a comment.  Keys:
 * qemu-version, allow-path (repeatable), memory-limit, cpu-limit,
 * output-limit, max-depth.
 */
#include "options.h"
#include "createopts.h"

#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_MAJOR 10
#define DEFAULT_MINOR 0

void die_msg(const struct options *o, const char *fmt, ...)
{
    va_list ap;

    fprintf(stderr, "%s: ", o->progname);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

void usage_hint(const struct options *o, const char *command)
{
    if (profile_at_least(&o->prof, 9, 0)) {
        if (command)
            fprintf(stderr, "Try '%s %s --help' for more info\n", o->argv0, command);
        else
            fprintf(stderr, "Try '%s --help' for more info\n", o->argv0);
    } else {
        fprintf(stderr, "Try '%s --help' for more information\n", o->progname);
    }
}

int option_error(const struct options *o, const char *cmd, int c,
                 const char *arg)
{
    int modern = profile_at_least(&o->prof, 9, 0);

    if (c == ':') {
        if (modern && optopt)
            fprintf(stderr, "%s %s: option requires an argument -- '%c'\n",
                    o->argv0, cmd, optopt);
        else if (modern)
            fprintf(stderr, "%s %s: option '%s' requires an argument\n",
                    o->argv0, cmd, arg);
        else
            die_msg(o, "missing argument for option '%s'", arg);
    } else {
        if (modern && optopt)
            fprintf(stderr, "%s %s: invalid option -- '%c'\n", o->argv0, cmd,
                    optopt);
        else if (modern)
            fprintf(stderr, "%s %s: unrecognized option '%s'\n", o->argv0, cmd,
                    arg);
        else
            die_msg(o, "unrecognized option '%s'", arg);
    }
    usage_hint(o, cmd);
    return 1;
}

int parse_output_format(const struct options *o, const char *cmd,
                        const char *arg, int *json)
{
    if (strcmp(arg, "json") == 0) {
        *json = 1;
        return 0;
    }
    if (strcmp(arg, "human") == 0) {
        *json = 0;
        return 0;
    }
    if (profile_at_least(&o->prof, 9, 0)) {
        die_msg(o, "--output expects 'human' or 'json' not '%s'", arg);
        usage_hint(o, cmd);
    } else {
        die_msg(o, "--output must be used with human or json as argument.");
    }
    return -1;
}

int64_t parse_size_arg(const struct options *o, const char *what,
                       const char *value)
{
    uint64_t v = 0;
    int hex = 0, rc = co_strtosz(value, &v, o->prof.major, &hex);

    if (hex)
        fprintf(stderr, "%s: warning: Using a multiplier suffix on hex numbers "
                "is deprecated: %s\n", o->progname, value);
    if (rc < 0 && rc != -ERANGE) {
        if (profile_at_least(&o->prof, 8, 0)) {
            die_msg(o, "Invalid %s specified: '%s'.", what, value);
        } else {
            die_msg(o, "Invalid %s specified. You may use k, M, G, T, P or E "
                    "suffixes for", what);
            die_msg(o, "kilobytes, megabytes, gigabytes, terabytes, petabytes "
                    "and exabytes.");
        }
        return -1;
    }
    if (rc < 0 || v > INT64_MAX) {
        die_msg(o, "Invalid %s specified. Must be between 0 and %lld.", what,
                (long long)INT64_MAX);
        return -1;
    }
    return (int64_t)v;
}

static int parse_version(const char *s, struct profile *prof)
{
    char *end;
    long major, minor = 0;

    errno = 0;
    major = strtol(s, &end, 10);
    if (end == s || errno || major < 1 || major > 99)
        return -1;
    if (*end == '.') {
        const char *m = end + 1;

        minor = strtol(m, &end, 10);
        if (end == m || minor < 0 || minor > 99)
            return -1;
        if (*end == '.') {      /* a patch level is accepted and ignored */
            const char *pl = end + 1;

            strtol(pl, &end, 10);
            if (end == pl)
                return -1;
        }
    }
    if (*end)
        return -1;
    prof->major = (int)major;
    prof->minor = (int)minor;
    return 0;
}

/* Sizes like 1G, 512M, 1073741824. */
static int parse_size(const char *s, uint64_t *out)
{
    char *end;
    unsigned long long v;
    uint64_t mul = 1;

    /* strtoull() takes "-1" (and leading spaces) as a huge number. */
    if (!isdigit((unsigned char)*s))
        return -1;
    errno = 0;
    v = strtoull(s, &end, 10);
    if (end == s || errno)
        return -1;
    switch (toupper((unsigned char)*end)) {
    case 'K': mul = 1ULL << 10; end++; break;
    case 'M': mul = 1ULL << 20; end++; break;
    case 'G': mul = 1ULL << 30; end++; break;
    case 'T': mul = 1ULL << 40; end++; break;
    case '\0': break;
    default: return -1;
    }
    if (*end == 'B' || *end == 'b')
        end++;
    if (*end || (v && mul > UINT64_MAX / v))
        return -1;
    *out = v * mul;
    return 0;
}

static int parse_uint(const char *s, uint64_t *out)
{
    char *end;
    unsigned long long v;

    if (!isdigit((unsigned char)*s))
        return -1;
    errno = 0;
    v = strtoull(s, &end, 10);
    if (end == s || *end || errno)
        return -1;
    *out = v;
    return 0;
}

/* The worker's wall-clock bound (twice this plus 10 s, in ms) must fit
 * an int: about 12 days is plenty. */
#define MAX_CPU_SECONDS 1000000

static int apply_setting(struct options *o, const char *key, const char *val)
{
    uint64_t n;

    if (strcmp(key, "qemu-version") == 0)
        return parse_version(val, &o->prof);
    if (strcmp(key, "memory-limit") == 0)
        return parse_size(val, &o->lim.memory_bytes);
    if (strcmp(key, "output-limit") == 0)
        return parse_size(val, &o->lim.output_bytes);
    if (strcmp(key, "cpu-limit") == 0) {
        if (parse_uint(val, &n) < 0 || n > MAX_CPU_SECONDS)
            return -1;
        o->lim.cpu_seconds = n;
        o->cpu_limit_set = 1;
        return 0;
    }
    if (strcmp(key, "x-test-kill-after-writes") == 0)
        return parse_uint(val, &o->lim.test_kill_after_writes);
    if (strcmp(key, "max-depth") == 0) {
        if (parse_uint(val, &n) < 0 || n > 1000)
            return -1;
        o->max_depth = (int)n;
        return 0;
    }
    if (strcmp(key, "allow-path") == 0) {
        if (o->n_allow_paths >= POLICY_MAX_DIRS)
            return -1;
        o->allow_paths[o->n_allow_paths] = strdup(val);
        return o->allow_paths[o->n_allow_paths++] ? 0 : -1;
    }
    return -1;
}

static char *trim(char *s)
{
    char *end;

    while (isspace((unsigned char)*s))
        s++;
    end = s + strlen(s);
    while (end > s && isspace((unsigned char)end[-1]))
        *--end = '\0';
    return s;
}

static int read_config(struct options *o)
{
    const char *path = getenv("INSTAR_CONFIG");
    char line[4096];
    int lineno = 0;
    FILE *f;

    if (!path)
        path = "/etc/instar/instar.conf";
    f = fopen(path, "r");
    if (!f) {
        if (errno == ENOENT)
            return 0;
        die_msg(o, "cannot read config file '%s': %s", path, strerror(errno));
        return -1;
    }
    while (fgets(line, sizeof(line), f)) {
        char *hash = strchr(line, '#'), *eq, *key, *val;

        lineno++;
        if (hash)
            *hash = '\0';
        key = trim(line);
        if (!*key)
            continue;
        eq = strchr(key, '=');
        if (!eq) {
            die_msg(o, "%s:%d: expected 'key = value'", path, lineno);
            fclose(f);
            return -1;
        }
        *eq = '\0';
        val = trim(eq + 1);
        key = trim(key);
        if (apply_setting(o, key, val) < 0) {
            die_msg(o, "%s:%d: bad setting '%s'", path, lineno, key);
            fclose(f);
            return -1;
        }
    }
    fclose(f);
    return 0;
}

static const char *base_name(const char *path)
{
    const char *slash = strrchr(path, '/');

    return slash ? slash + 1 : path;
}

/* instar's own options; those with a value take it as the next argument
 * or after '='. */
static const struct {
    const char *name;
    const char *key;            /* setting key, or NULL for a flag */
} own_options[] = {
    { "--qemu-version", "qemu-version" },
    { "--allow-path", "allow-path" },
    { "--memory-limit", "memory-limit" },
    { "--cpu-limit", "cpu-limit" },
    { "--output-limit", "output-limit" },
    { "--max-depth", "max-depth" },
    { "--unsafe-quirks", NULL },
    { "--ignore-quirks", NULL },
    { "--extra-detail", NULL },
    { "--no-sandbox", NULL },
    { "--x-test-sandbox-escape", NULL },
    { "--x-test-kill-after-writes", "x-test-kill-after-writes" },
};

static void apply_flag(struct options *o, const char *name)
{
    if (strcmp(name, "--unsafe-quirks") == 0)
        o->ctx_flags |= INS_F_UNSAFE_QUIRKS;
    else if (strcmp(name, "--ignore-quirks") == 0)
        o->ctx_flags |= INS_F_IGNORE_QUIRKS;
    else if (strcmp(name, "--extra-detail") == 0)
        o->ctx_flags |= INS_F_EXTRA_DETAIL;
    else if (strcmp(name, "--no-sandbox") == 0)
        o->lim.no_sandbox = 1;
    else if (strcmp(name, "--x-test-sandbox-escape") == 0)
        o->lim.test_escape = 1;
}

int options_parse(struct options *o, int argc, char **argv)
{
    const char *env;
    int in, out;
    size_t k;

    memset(o, 0, sizeof(*o));
    o->argv0 = argv[0];
    o->as_qemu_img = strcmp(base_name(argv[0]), "qemu-img") == 0;
    o->progname = o->as_qemu_img ? "qemu-img" : "instar";
    o->prof.major = DEFAULT_MAJOR;
    o->prof.minor = DEFAULT_MINOR;
    o->lim.memory_bytes = 1ULL << 30;
    o->lim.cpu_seconds = 60;
    o->lim.output_bytes = 64ULL << 20;
    o->max_depth = 16;

    if (read_config(o) < 0)
        return -1;
    env = getenv("INSTAR_QEMU_VERSION");
    if (env && *env && parse_version(env, &o->prof) < 0) {
        die_msg(o, "INSTAR_QEMU_VERSION: expected a version like 7.2 or 10.0, not '%s'", env);
        return -1;
    }

    for (in = out = 1; in < argc; in++) {
        const char *arg = argv[in];
        int matched = 0;

        if (strcmp(arg, "--") == 0) {
            while (in < argc)
                argv[out++] = argv[in++];
            break;
        }
        for (k = 0; k < sizeof(own_options) / sizeof(own_options[0]); k++) {
            size_t len = strlen(own_options[k].name);
            const char *val;

            if (strncmp(arg, own_options[k].name, len) != 0 ||
                (arg[len] != '\0' && arg[len] != '='))
                continue;
            matched = 1;
            if (!own_options[k].key) {
                if (arg[len] == '=') {
                    die_msg(o, "option '%s' takes no value", own_options[k].name);
                    return -1;
                }
                apply_flag(o, own_options[k].name);
                break;
            }
            if (arg[len] == '=')
                val = arg + len + 1;
            else if (in + 1 < argc)
                val = argv[++in];
            else {
                die_msg(o, "option '%s' needs a value", own_options[k].name);
                return -1;
            }
            if (apply_setting(o, own_options[k].key, val) < 0) {
                die_msg(o, "bad value '%s' for %s", val, own_options[k].name);
                return -1;
            }
            break;
        }
        if (!matched)
            argv[out++] = argv[in];
    }
    argv[out] = NULL;
    o->ctx_flags |= (unsigned)(o->prof.major * 100 + o->prof.minor) << INS_F_QEMU_SHIFT;
    return out;
}

void options_free(struct options *o)
{
    size_t i;

    for (i = 0; i < o->n_allow_paths; i++)
        free(o->allow_paths[i]);
    o->n_allow_paths = 0;
}

int options_policy(const struct options *o, struct policy *p, const char *image)
{
    size_t i;

    policy_init(p, o->max_depth);
    if (policy_allow_image_dir(p, image) < 0)
        return -1;
    for (i = 0; i < o->n_allow_paths; i++) {
        if (policy_allow_dir(p, o->allow_paths[i]) < 0) {
            die_msg(o, "--allow-path '%s': not a directory, or more than %d "
                    "allowed directories", o->allow_paths[i], POLICY_MAX_DIRS - 1);
            return -1;
        }
    }
    return 0;
}

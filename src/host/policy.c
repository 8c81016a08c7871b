/*
 * policy.c - the host's path policy for files named inside images.
 */
#include "policy.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/openat2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "../engine/engine.h"

void policy_init(struct policy *p, int max_depth)
{
    memset(p, 0, sizeof(*p));
    p->max_depth = max_depth;
}

int policy_allow_dir(struct policy *p, const char *dir)
{
    char *resolved = realpath(dir, NULL);
    struct stat st;

    if (!resolved || stat(resolved, &st) < 0 || !S_ISDIR(st.st_mode) ||
        p->n_dirs >= POLICY_MAX_DIRS) {
        free(resolved);
        return -1;
    }
    p->dirs[p->n_dirs++] = resolved;
    return 0;
}

int policy_allow_image_dir(struct policy *p, const char *image)
{
    char *copy = strdup(image), *slash;
    int rc;

    if (!copy)
        return -1;
    slash = strrchr(copy, '/');
    if (!slash)
        rc = policy_allow_dir(p, ".");
    else if (slash == copy)
        rc = policy_allow_dir(p, "/");
    else {
        *slash = '\0';
        rc = policy_allow_dir(p, copy);
    }
    free(copy);
    return rc;
}

int policy_note_open(struct policy *p, int fd)
{
    struct stat st;
    size_t i;

    if (fstat(fd, &st) < 0)
        return -1;
    for (i = 0; i < p->n_seen; i++)
        if (p->seen_dev[i] == st.st_dev && p->seen_ino[i] == st.st_ino)
            return -1;
    if (p->n_seen < POLICY_MAX_SEEN) {
        p->seen_dev[p->n_seen] = st.st_dev;
        p->seen_ino[p->n_seen] = st.st_ino;
        p->n_seen++;
    }
    return 0;
}

void policy_new_chain(struct policy *p)
{
    p->n_seen = 0;
}

void policy_forget(struct policy *p)
{
    size_t i;

    for (i = 0; i < p->n_dirs; i++)
        free(p->dirs[i]);
    p->n_dirs = 0;
    p->n_seen = 0;
}

/* "proto:..." before any '/': json:, nbd:, http:, file: and the rest. */
static int has_protocol(const char *name)
{
    const char *p = strpbrk(name, ":/");

    return p && *p == ':';
}

char *policy_combine(const char *base, const char *name)
{
    const char *slash = strrchr(base, '/');
    size_t dirlen;
    char *out;

    if (name[0] == '/' || !slash)
        return strdup(name);
    dirlen = (size_t)(slash - base) + 1;
    out = malloc(dirlen + strlen(name) + 1);
    if (!out)
        return NULL;
    memcpy(out, base, dirlen);
    strcpy(out + dirlen, name);
    return out;
}

/* The allowed directory that contains path, as an offset into path where
 * the part below the directory starts; -1 if none does. */
static int find_dir(const struct policy *p, const char *path, size_t *rest)
{
    size_t i;

    for (i = 0; i < p->n_dirs; i++) {
        size_t len = strlen(p->dirs[i]);

        if (strcmp(p->dirs[i], "/") == 0) {
            *rest = 1;
            return (int)i;
        }
        if (strncmp(path, p->dirs[i], len) == 0 && path[len] == '/') {
            *rest = len + 1;
            return (int)i;
        }
    }
    return -1;
}

/* Opens rel beneath dir without following any symlink or leaving dir. */
static int open_beneath(const char *dir, const char *rel)
{
    struct open_how how;
    int dfd, fd;

    dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0)
        return -1;
    memset(&how, 0, sizeof(how));
    how.flags = O_RDONLY | O_CLOEXEC | O_NOCTTY;
    how.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;
    fd = (int)syscall(SYS_openat2, dfd, rel, &how, sizeof(how));
    if (fd < 0 && errno == ENOSYS)
        fd = openat(dfd, rel, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY);
    close(dfd);
    return fd;
}

static void allowed_list(const struct policy *p, char *buf, size_t len)
{
    size_t i, used = 0;

    buf[0] = '\0';
    for (i = 0; i < p->n_dirs && used + 1 < len; i++) {
        int n = snprintf(buf + used, len - used, "%s%s", i ? ", " : "",
                         p->dirs[i]);
        if (n < 0)
            break;
        used += (size_t)n;
    }
}

int policy_open_ref(struct policy *p, const char *what, const char *base,
                    const char *name, int *err, char *errbuf, size_t errlen)
{
    char *combined = NULL, *resolved = NULL, dirs[512];
    size_t rest;
    struct stat st;
    int fd = -1, d;

    *err = INS_EREFUSED;
    if (name[0] == '\0') {
        snprintf(errbuf, errlen, "%s reference is empty", what);
        return -1;
    }
    if (strncmp(name, "json:", 5) == 0 || has_protocol(name)) {
        snprintf(errbuf, errlen,
                 "%s '%s' refused: json: and protocol names are not allowed",
                 what, name);
        return -1;
    }
    combined = policy_combine(base, name);
    if (!combined) {
        snprintf(errbuf, errlen, "out of memory");
        return -1;
    }
    resolved = realpath(combined, NULL);
    if (!resolved) {
        int e = errno;

        if (e == ENOENT) {
            *err = INS_ENOENT;
            snprintf(errbuf, errlen, "Could not open '%s': No such file or directory",
                     combined);
        } else {
            snprintf(errbuf, errlen, "Could not open '%s': %s", combined, strerror(e));
        }
        goto out;
    }
    d = find_dir(p, resolved, &rest);
    if (d < 0) {
        allowed_list(p, dirs, sizeof(dirs));
        snprintf(errbuf, errlen,
                 "%s '%s' refused: it resolves to '%s', outside the allowed "
                 "directories (%s); see --allow-path", what, name, resolved, dirs);
        goto out;
    }
    fd = open_beneath(p->dirs[d], resolved + rest);
    if (fd < 0) {
        snprintf(errbuf, errlen, "Could not open '%s': %s", combined, strerror(errno));
        goto out;
    }
    if (fstat(fd, &st) < 0 || !(S_ISREG(st.st_mode) || S_ISBLK(st.st_mode))) {
        snprintf(errbuf, errlen, "%s '%s' refused: not a regular file or block device",
                 what, name);
        close(fd);
        fd = -1;
        goto out;
    }
    if (policy_note_open(p, fd) < 0) {
        snprintf(errbuf, errlen, "%s '%s' refused: it refers back to an image "
                 "already in use (a loop)", what, name);
        close(fd);
        fd = -1;
        goto out;
    }
out:
    free(combined);
    free(resolved);
    return fd;
}

/*
 * worker.c - fork a sandboxed worker, run one engine job in it, relay its
 * requests for referenced files through the host's policy, and collect
 * its answer.
 */
#include "worker.h"

#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <poll.h>
#include <sched.h>
#include <seccomp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ---- channel: frames of [u32 type][u32 length][payload] on a stream
 * socket; a descriptor rides along with a frame as SCM_RIGHTS. ---- */

enum {
    MSG_RESULT = 1,     /* worker -> host: encoded tree */
    MSG_ERROR = 2,      /* worker -> host: i32 code, message */
    MSG_OPEN_REF = 3,   /* worker -> host: u32 kind, base NUL, name NUL */
    MSG_FD = 4,         /* host -> worker: descriptor attached */
    MSG_REFUSED = 5,    /* host -> worker: i32 code, message */
    MSG_PARTIAL = 6,    /* worker -> host: encoded tree, more to come */
};

#define MAX_REQUEST 65536u          /* largest frame the worker accepts */
#define DEFAULT_MAX_OUTPUT (64u << 20)

static int write_all(int fd, const void *buf, size_t len)
{
    const uint8_t *p = buf;

    while (len > 0) {
        ssize_t n = write(fd, p, len);

        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static int read_all(int fd, void *buf, size_t len)
{
    uint8_t *p = buf;

    while (len > 0) {
        ssize_t n = read(fd, p, len);

        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static int send_frame(int sock, uint32_t type, const void *payload,
                      uint32_t len, int pass_fd)
{
    uint32_t hdr[2] = { type, len };

    if (pass_fd >= 0) {
        struct msghdr msg;
        struct iovec iov = { hdr, sizeof(hdr) };
        union {
            char buf[CMSG_SPACE(sizeof(int))];
            struct cmsghdr align;
        } u;
        struct cmsghdr *cm;

        memset(&msg, 0, sizeof(msg));
        memset(&u, 0, sizeof(u));
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        msg.msg_control = u.buf;
        msg.msg_controllen = sizeof(u.buf);
        cm = CMSG_FIRSTHDR(&msg);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(cm), &pass_fd, sizeof(int));
        if (sendmsg(sock, &msg, MSG_NOSIGNAL) != (ssize_t)sizeof(hdr))
            return -1;
    } else if (write_all(sock, hdr, sizeof(hdr)) < 0) {
        return -1;
    }
    return len ? write_all(sock, payload, len) : 0;
}

/* Reads a frame header, collecting a passed descriptor if one came. */
static int recv_header(int sock, uint32_t hdr[2], int *got_fd)
{
    struct msghdr msg;
    struct iovec iov = { hdr, 2 * sizeof(uint32_t) };
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } u;
    struct cmsghdr *cm;
    ssize_t n;

    *got_fd = -1;
    memset(&msg, 0, sizeof(msg));
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = u.buf;
    msg.msg_controllen = sizeof(u.buf);
    do {
        n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
    } while (n < 0 && errno == EINTR);
    if (n <= 0)
        return -1;
    for (cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm))
        if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS &&
            cm->cmsg_len == CMSG_LEN(sizeof(int)))
            memcpy(got_fd, CMSG_DATA(cm), sizeof(int));
    if ((size_t)n < 2 * sizeof(uint32_t) &&
        read_all(sock, (uint8_t *)hdr + n, 2 * sizeof(uint32_t) - (size_t)n) < 0) {
        if (*got_fd >= 0)
            close(*got_fd);
        return -1;
    }
    return 0;
}

/* ---- the worker side ---- */

#if defined(__SANITIZE_ADDRESS__)
#define UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UNDER_ASAN 1
#endif
#endif
#if defined(UNDER_ASAN) || defined(INSTAR_SANITIZE)
#define UNDER_SANITIZER 1
#endif

struct fd_bdev {
    int fd;
    int no_reserve;     /* fallocate failed once: the file system cannot */
};

/* Writes of at least this much reserve their blocks first (fd_pwrite). */
#define RESERVE_MIN (256u << 10)

static int64_t fd_pread(void *opaque, void *buf, size_t len, uint64_t offset)
{
    struct fd_bdev *f = opaque;
    size_t done = 0;

    if (offset > INT64_MAX)
        return INS_EIO;
    while (done < len) {
        ssize_t n = pread(f->fd, (uint8_t *)buf + done, len - done,
                          (off_t)(offset + done));

        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return INS_EIO;
        if (n == 0)
            break;
        done += (size_t)n;
    }
    return (int64_t)done;
}

static int fd_seek(void *opaque, uint64_t offset, int hole, uint64_t *out)
{
    struct fd_bdev *f = opaque;
    off_t r;

    if (offset > INT64_MAX)
        return INS_EINVAL;
    r = lseek(f->fd, (off_t)offset, hole ? SEEK_HOLE : SEEK_DATA);
    if (r < 0)
        return errno == ENXIO ? INS_ENOENT : INS_EIO;
    *out = (uint64_t)r;
    return INS_OK;
}

/* Test hook (--x-test-kill-after-writes): writes left before the worker
 * kills itself, simulating a crash or kill -9 at that point. 0 = off.
 * Process-wide because it stands for the whole process dying. */
static uint64_t writes_until_kill;

static void maybe_die_before_write(void)
{
    if (writes_until_kill &&
        __atomic_sub_fetch(&writes_until_kill, 1, __ATOMIC_SEQ_CST) == 0)
        syscall(SYS_tgkill, getpid(), (pid_t)syscall(SYS_gettid), SIGKILL);
}

static int64_t fd_pwrite(void *opaque, const void *buf, size_t len,
                         uint64_t offset)
{
    struct fd_bdev *f = opaque;
    size_t done = 0;

    maybe_die_before_write();
    if (offset > INT64_MAX)
        return INS_EFBIG;
    /*
     * A large write allocates its blocks first (unwritten extents, size
     * unchanged): ext4 then copies into allocated blocks without the
     * per-block bookkeeping of delayed allocation, a third faster.  What
     * ends up allocated is the same; out of space shows here already.
     */
    if (len >= RESERVE_MIN && !f->no_reserve &&
        len <= (uint64_t)INT64_MAX - offset &&
        fallocate(f->fd, FALLOC_FL_KEEP_SIZE, (off_t)offset, (off_t)len) < 0) {
        if (errno == ENOSPC || errno == EFBIG)
            return INS_EFBIG;
        f->no_reserve = 1;
    }
    while (done < len) {
        ssize_t n = pwrite(f->fd, (const uint8_t *)buf + done, len - done,
                           (off_t)(offset + done));

        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return errno == EFBIG || errno == ENOSPC ? INS_EFBIG : INS_EIO;
        done += (size_t)n;
    }
    return (int64_t)done;
}

static int fd_flush(void *opaque)
{
    struct fd_bdev *f = opaque;

    return fdatasync(f->fd) < 0 && errno != EINVAL ? INS_EIO : INS_OK;
}

static int fd_truncate(void *opaque, uint64_t size)
{
    struct fd_bdev *f = opaque;

    if (size > INT64_MAX)
        return INS_EFBIG;
    if (ftruncate(f->fd, (off_t)size) < 0)
        return errno == EFBIG ? INS_EFBIG : errno == EINVAL ? INS_EINVAL
                                                            : INS_EIO;
    return INS_OK;
}

static int fd_punch(void *opaque, uint64_t offset, uint64_t len)
{
    struct fd_bdev *f = opaque;

    if (offset > INT64_MAX || len > INT64_MAX - offset)
        return INS_EFBIG;
    if (fallocate(f->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                  (off_t)offset, (off_t)len) < 0)
        return INS_ENOTSUP;
    return INS_OK;
}

/* copy_file_range() between two descriptors of the worker (convert -C). */
static int64_t fd_copy(void *opaque, struct ins_bdev *dst, uint64_t offset,
                       uint64_t dst_offset, size_t len)
{
    struct fd_bdev *f = opaque;
    loff_t in = (loff_t)offset, out = (loff_t)dst_offset;
    ssize_t n;

    if (dst->pwrite != fd_pwrite || offset > INT64_MAX || dst_offset > INT64_MAX)
        return INS_ENOTSUP;
    maybe_die_before_write();
    do {
        n = copy_file_range(f->fd, &in, ((struct fd_bdev *)dst->opaque)->fd,
                            &out, len, 0);
    } while (n < 0 && errno == EINTR);
    if (n >= 0)
        return n;
    if (errno == EXDEV || errno == EOPNOTSUPP || errno == ENOSYS ||
        errno == EINVAL || errno == EBADF || errno == EPERM)
        return INS_ENOTSUP;
    return errno == EFBIG || errno == ENOSPC ? INS_EFBIG : INS_EIO;
}

/*
 * A read-only shared mapping of part of the file: convert looks at data in
 * the page cache instead of copying it out first.  MAP_POPULATE maps every
 * page in one call rather than faulting them in one by one.
 */
static int fd_view(void *opaque, uint64_t offset, size_t len, const void **out)
{
    struct fd_bdev *f = opaque;
    uint64_t delta = offset % (uint64_t)getpagesize();
    void *m;

    if (len == 0 || offset > INT64_MAX || len > SIZE_MAX - delta)
        return INS_ENOTSUP;
    m = mmap(NULL, len + (size_t)delta, PROT_READ, MAP_SHARED | MAP_POPULATE,
             f->fd, (off_t)(offset - delta));
    if (m == MAP_FAILED)
        return INS_ENOTSUP;
    *out = (const uint8_t *)m + delta;
    return INS_OK;
}

static void fd_unview(const void *addr, size_t len, uint64_t offset)
{
    uint64_t delta = offset % (uint64_t)getpagesize();

    munmap((uint8_t *)(uintptr_t)addr - delta, len + (size_t)delta);
}

int worker_bdev_init(struct ins_bdev *bd, int fd, const char *name)
{
    struct fd_bdev *f = malloc(sizeof(*f));
    struct stat st;

    if (!f)
        return INS_ENOMEM;
    /* The fstat system call itself: glibc's fstat() is newfstatat(),
     * which the sandbox does not allow (it could look up paths). */
    if (syscall(SYS_fstat, fd, &st) < 0) {
        free(f);
        return INS_EIO;
    }
    f->fd = fd;
    f->no_reserve = !S_ISREG(st.st_mode);
    memset(bd, 0, sizeof(*bd));
    bd->opaque = f;
    bd->pread = fd_pread;
    if (S_ISBLK(st.st_mode)) {
        off_t end = lseek(fd, 0, SEEK_END);
        bd->size = end > 0 ? (uint64_t)end : 0;
    } else {
        bd->size = st.st_size > 0 ? (uint64_t)st.st_size : 0;
    }
    bd->allocated = (uint64_t)st.st_blocks * 512;
    bd->name = name;
    bd->seek = S_ISREG(st.st_mode) ? fd_seek : NULL;
    bd->copy = S_ISREG(st.st_mode) ? fd_copy : NULL;
    if (S_ISREG(st.st_mode) || S_ISBLK(st.st_mode)) {
        bd->view = fd_view;
        bd->unview = fd_unview;
    }
    /* Writable only if the host opened it so. */
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0 && (fl & O_ACCMODE) == O_RDWR) {
        bd->pwrite = fd_pwrite;
        bd->flush = fd_flush;
        bd->truncate = fd_truncate;
        bd->punch = S_ISREG(st.st_mode) ? fd_punch : NULL;
    }
    return INS_OK;
}

struct worker_state {
    int sock;
};

static int worker_open_ref(struct ins_ctx *ctx, enum ins_ref_kind kind,
                           const char *base, const char *name,
                           struct ins_bdev **out)
{
    struct worker_state *ws = ctx->ref_opaque;
    size_t blen = strlen(base), nlen = strlen(name);
    uint32_t hdr[2], kind32 = (uint32_t)kind;
    uint8_t *req, reply[1024];
    struct ins_bdev *bd;
    char *full;
    int fd, rc;

    if (blen > MAX_REQUEST || nlen > MAX_REQUEST)
        return ins_error(ctx, INS_EREFUSED, "reference name too long");
    req = malloc(4 + blen + 1 + nlen + 1);
    if (!req)
        return ins_error(ctx, INS_ENOMEM, "Out of memory");
    memcpy(req, &kind32, 4);
    memcpy(req + 4, base, blen + 1);
    memcpy(req + 4 + blen + 1, name, nlen + 1);
    rc = send_frame(ws->sock, MSG_OPEN_REF, req, (uint32_t)(4 + blen + nlen + 2), -1);
    free(req);
    if (rc < 0 || recv_header(ws->sock, hdr, &fd) < 0)
        return ins_error(ctx, INS_EIO, "lost the channel to the host");
    if (hdr[1] > sizeof(reply) - 1 || read_all(ws->sock, reply, hdr[1]) < 0) {
        if (fd >= 0)
            close(fd);
        return ins_error(ctx, INS_EIO, "bad reply from the host");
    }
    reply[hdr[1]] = '\0';
    if (hdr[0] != MSG_FD || fd < 0) {
        int32_t code = INS_EREFUSED;

        if (fd >= 0)
            close(fd);
        if (hdr[1] >= 4)
            memcpy(&code, reply, 4);
        if (code >= 0 || code < INS_ELAST)
            code = INS_EREFUSED;
        return ins_error(ctx, code, "%s", hdr[1] >= 4 ? (char *)reply + 4 : "refused");
    }
    bd = malloc(sizeof(*bd));
    full = ins_path_combine(ctx, base, name);
    if (!bd || !full || worker_bdev_init(bd, fd, full) != INS_OK) {
        free(bd);
        free(full);
        close(fd);
        return ins_error(ctx, INS_ENOMEM, "Out of memory");
    }
    *out = bd;
    return INS_OK;
}

/*
 * Sends a partial result.  The worker goes on with the next one while the
 * host renders this one (both cores work); the socket's buffer is the
 * bound on how far ahead it gets, so memory stays bounded on both sides.
 * A host that wants the job stopped kills the worker.
 */
static int worker_emit(struct ins_ctx *ctx, const struct tree *part)
{
    struct worker_state *ws = ctx->ref_opaque;
    size_t len = 0;
    uint8_t *wire = tree_encode(&ins_libc_alloc, part, &len);
    int rc;

    if (!wire || len > UINT32_MAX) {
        free(wire);
        return ins_error(ctx, INS_ENOMEM, "Out of memory");
    }
    rc = send_frame(ws->sock, MSG_PARTIAL, wire, (uint32_t)len, -1);
    free(wire);
    if (rc < 0)
        return ins_error(ctx, INS_EIO, "lost the channel to the host");
    return INS_OK;
}

/* MSG_ERROR: i32 code, u8 plain, message. */
static void report_error(int sock, int code, int plain, const char *msg)
{
    size_t len = strnlen(msg, 1000);
    uint8_t buf[5 + 1000];
    int32_t c = code;

    memcpy(buf, &c, 4);
    buf[4] = plain ? 1 : 0;
    memcpy(buf + 5, msg, len);
    send_frame(sock, MSG_ERROR, buf, (uint32_t)(5 + len), -1);
}

static int add_rule(scmp_filter_ctx f, int nr)
{
    return seccomp_rule_add(f, SCMP_ACT_ALLOW, nr, 0);
}

/*
 * The allow-list.  What is absent matters most: open/openat/creat, execve,
 * socket/connect/bind, ptrace, process_vm_*, mount, kill of others...
 * Memory may be mapped but never executable.
 */
static int install_seccomp(pid_t self)
{
    static const int allowed[] = {
        SCMP_SYS(read), SCMP_SYS(write), SCMP_SYS(pread64),
        SCMP_SYS(pwrite64), SCMP_SYS(readv), SCMP_SYS(writev),
        SCMP_SYS(preadv), SCMP_SYS(pwritev), SCMP_SYS(lseek),
        SCMP_SYS(fstat), SCMP_SYS(close), SCMP_SYS(fsync),
        SCMP_SYS(fdatasync), SCMP_SYS(ftruncate), SCMP_SYS(fallocate),
        SCMP_SYS(copy_file_range), SCMP_SYS(sendmsg), SCMP_SYS(recvmsg),
        SCMP_SYS(munmap), SCMP_SYS(mremap), SCMP_SYS(brk),
        SCMP_SYS(madvise), SCMP_SYS(futex), SCMP_SYS(set_robust_list),
        SCMP_SYS(get_robust_list), SCMP_SYS(rseq), SCMP_SYS(sched_yield),
        SCMP_SYS(sched_getaffinity), SCMP_SYS(getpid), SCMP_SYS(gettid),
        SCMP_SYS(clock_gettime), SCMP_SYS(clock_nanosleep),
        SCMP_SYS(nanosleep), SCMP_SYS(rt_sigreturn),
        SCMP_SYS(rt_sigprocmask), SCMP_SYS(sigaltstack),
        SCMP_SYS(exit), SCMP_SYS(exit_group), SCMP_SYS(getrandom),
        SCMP_SYS(membarrier),
    };
    scmp_filter_ctx f = seccomp_init(SCMP_ACT_KILL_PROCESS);
    size_t i;
    int rc = 0;

    if (!f)
        return -1;
    for (i = 0; i < sizeof(allowed) / sizeof(allowed[0]) && rc == 0; i++)
        rc = add_rule(f, allowed[i]);
    /* Memory: never executable. */
    if (rc == 0)
        rc = seccomp_rule_add(f, SCMP_ACT_ALLOW, SCMP_SYS(mmap), 1,
                              SCMP_A2(SCMP_CMP_MASKED_EQ, PROT_EXEC, 0));
    if (rc == 0)
        rc = seccomp_rule_add(f, SCMP_ACT_ALLOW, SCMP_SYS(mprotect), 1,
                              SCMP_A2(SCMP_CMP_MASKED_EQ, PROT_EXEC, 0));
    /* Threads, for parallel work: clone only with CLONE_THREAD; make
     * clone3 fail so glibc falls back to clone, whose flags we can see. */
    if (rc == 0)
        rc = seccomp_rule_add(f, SCMP_ACT_ALLOW, SCMP_SYS(clone), 1,
                              SCMP_A0(SCMP_CMP_MASKED_EQ, CLONE_THREAD,
                                      CLONE_THREAD));
    if (rc == 0)
        rc = seccomp_rule_add(f, SCMP_ACT_ERRNO(ENOSYS), SCMP_SYS(clone3), 0);
    /* fcntl for F_GETFL/F_GETFD only. */
    if (rc == 0)
        rc = seccomp_rule_add(f, SCMP_ACT_ALLOW, SCMP_SYS(fcntl), 1,
                              SCMP_A1(SCMP_CMP_EQ, F_GETFL, 0));
    if (rc == 0)
        rc = seccomp_rule_add(f, SCMP_ACT_ALLOW, SCMP_SYS(fcntl), 1,
                              SCMP_A1(SCMP_CMP_EQ, F_GETFD, 0));
    /* abort() signals itself, and nothing else may be signalled. */
    if (rc == 0)
        rc = seccomp_rule_add(f, SCMP_ACT_ALLOW, SCMP_SYS(tgkill), 1,
                              SCMP_A0(SCMP_CMP_EQ, (scmp_datum_t)self, 0));
    if (rc == 0)
        rc = seccomp_rule_add(f, SCMP_ACT_ALLOW, SCMP_SYS(rt_sigaction), 0);
    if (rc == 0)
        rc = seccomp_load(f);
    seccomp_release(f);
    return rc == 0 ? 0 : -1;
}

static void set_limit(int resource, uint64_t soft, uint64_t hard)
{
    struct rlimit rl = { soft, hard };

    setrlimit(resource, &rl);
}

/*
 * Renumbers the descriptors the job keeps to 3 (the channel), 4, 5, ...
 * and closes everything else, so nothing the host had open leaks in.
 */
static int keep_only(int *sock, int *fds, size_t nfds)
{
    int high[64 + 1];
    size_t i;

    if (nfds > 64)
        return -1;
    /* First move everything out of the way, then into place. */
    high[0] = fcntl(*sock, F_DUPFD, 1000);
    for (i = 0; i < nfds; i++)
        high[i + 1] = fcntl(fds[i], F_DUPFD, 1000);
    for (i = 0; i <= nfds; i++) {
        if (high[i] < 0 || dup2(high[i], 3 + (int)i) < 0)
            return -1;
    }
    *sock = 3;
    for (i = 0; i < nfds; i++)
        fds[i] = 4 + (int)i;
    /* Everything above the kept descriptors goes, including the copies
     * made above. */
    if (close_range(4 + (unsigned)nfds, ~0U, 0) < 0)
        return -1;      /* fail closed rather than leak a descriptor */
    return 0;
}

/*
 * The worker gets no terminal: whatever it wants to say goes through the
 * channel, where the host bounds it.  Sanitizer builds keep stderr so
 * their reports are seen.
 */
static void redirect_std(void)
{
    int devnull = open("/dev/null", O_RDWR);

    if (devnull >= 0) {
        dup2(devnull, 0);
        dup2(devnull, 1);
#ifndef UNDER_SANITIZER
        dup2(devnull, 2);
#endif
        if (devnull > 2)
            close(devnull);
    }
}


/* Whether the worker runs under its address-space limit. */
static int memory_limited(const struct worker_limits *lim)
{
#ifdef UNDER_ASAN
    (void)lim;
    return 0;
#else
    return lim->memory_bytes && !lim->no_sandbox;
#endif
}

/* An allocation failed: most likely the limit, so say which one. */
static void name_memory_limit(struct ins_ctx *ctx, const struct worker_limits *lim)
{
    size_t n = strlen(ctx->errmsg);
    int mib = lim->memory_bytes >= (1u << 20);

    snprintf(ctx->errmsg + n, sizeof(ctx->errmsg) - n,
             "%s(the worker's memory limit is %llu %s; --memory-limit)",
             n ? " " : "",
             (unsigned long long)(mib ? lim->memory_bytes >> 20 : lim->memory_bytes),
             mib ? "MiB" : "bytes");
}

/* A bus error in the worker is a view (fd_view) of a file that shrank
 * meanwhile: end with a status the host names (describe_death). */
static void on_sigbus(int sig)
{
    (void)sig;
    _exit(123);
}

static void worker_main(const struct worker_limits *lim, unsigned ctx_flags,
                        worker_job_fn fn, void *job, int sock, int *fds,
                        size_t nfds)
{
    struct ins_ctx ctx;
    struct tree_builder tb;
    struct tree *result = NULL;
    uint8_t *wire;
    size_t wire_len = 0;
    struct worker_state ws;
    int rc;

    redirect_std();
    if (keep_only(&sock, fds, nfds) < 0)
        _exit(120);
    /* One malloc arena for every thread: glibc trims a thread arena's
     * heap only after reading /proc/sys/vm/overcommit_memory, an open()
     * the sandbox kills. */
    mallopt(M_ARENA_MAX, 1);
    {
        struct sigaction sa;

        memset(&sa, 0, sizeof(sa));
        sa.sa_handler = on_sigbus;
        sigaction(SIGBUS, &sa, NULL);
        /* A write past RLIMIT_FSIZE fails with EFBIG, as in qemu-img,
         * rather than killing the worker. */
        sa.sa_handler = SIG_IGN;
        sigaction(SIGXFSZ, &sa, NULL);
    }
    if (!lim->no_sandbox) {
        set_limit(RLIMIT_CORE, 0, 0);
#ifndef UNDER_ASAN
        if (lim->memory_bytes)
            set_limit(RLIMIT_AS, lim->memory_bytes, lim->memory_bytes);
#endif
        if (lim->cpu_seconds)
            set_limit(RLIMIT_CPU, lim->cpu_seconds, lim->cpu_seconds + 1);
        if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
            _exit(121);
        if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) < 0)
            _exit(121);
        if (install_seccomp(getpid()) < 0)
            _exit(122);
    }
    if (lim->test_kill_after_writes)
        writes_until_kill = lim->test_kill_after_writes + 1;
    if (lim->test_escape) {
        /* Test hook: a compromised worker trying to read a host file. */
        int fd = open("/etc/passwd", O_RDONLY);

        if (fd >= 0) {
            report_error(sock, INS_EIO, 0, "sandbox escape: open() succeeded");
            _exit(0);
        }
    }

    memset(&ctx, 0, sizeof(ctx));
    ctx.alloc = &ins_libc_alloc;
    ctx.flags = ctx_flags;
    ctx.open_ref = worker_open_ref;
    ctx.emit = worker_emit;
    ws.sock = sock;
    ctx.ref_opaque = &ws;
    tree_builder_init(&tb, &ins_libc_alloc);

    rc = fn(&ctx, job, fds, nfds, &tb, &result);
    if (rc == INS_ENOMEM && memory_limited(lim))
        name_memory_limit(&ctx, lim);
    if (rc < 0) {
        report_error(sock, rc, ctx.errmsg_plain,
                     ctx.errmsg[0] ? ctx.errmsg : "operation failed");
        _exit(0);
    }
    wire = result ? tree_encode(&ins_libc_alloc, result, &wire_len) : NULL;
    if (!wire || wire_len > UINT32_MAX) {
        report_error(sock, INS_ENOMEM, 0, "result too large");
        _exit(0);
    }
    send_frame(sock, MSG_RESULT, wire, (uint32_t)wire_len, -1);
    _exit(0);
}

/* ---- the host side ---- */

static void answer_ref(int sock, const uint8_t *payload, uint32_t len,
                       worker_ref_fn ref_fn, void *ref_opaque)
{
    struct worker_ref_request req;
    char errbuf[900];
    uint8_t reply[4 + sizeof(errbuf)];
    const char *base, *name;
    uint32_t kind;
    int err = INS_EREFUSED, fd = -1;
    int32_t code;
    size_t mlen;

    errbuf[0] = '\0';
    /* Validate: u32 kind, then exactly two NUL-terminated strings. */
    if (len < 6 || payload[len - 1] != '\0') {
        snprintf(errbuf, sizeof(errbuf), "malformed request");
        goto refuse;
    }
    memcpy(&kind, payload, 4);
    base = (const char *)payload + 4;
    name = memchr(base, '\0', len - 4);
    if (!name || kind > INS_REF_PARENT) {
        snprintf(errbuf, sizeof(errbuf), "malformed request");
        goto refuse;
    }
    name++;
    if ((const uint8_t *)name >= payload + len ||
        strlen(name) != (size_t)(payload + len - 1 - (const uint8_t *)name)) {
        snprintf(errbuf, sizeof(errbuf), "malformed request");
        goto refuse;
    }
    req.kind = (enum ins_ref_kind)kind;
    req.base = base;
    req.name = name;
    if (ref_fn)
        fd = ref_fn(ref_opaque, &req, &err, errbuf, sizeof(errbuf));
    else
        snprintf(errbuf, sizeof(errbuf), "references are not allowed here");
    if (fd >= 0) {
        send_frame(sock, MSG_FD, NULL, 0, fd);
        close(fd);
        return;
    }
refuse:
    code = err;
    mlen = strnlen(errbuf, sizeof(errbuf) - 1);
    memcpy(reply, &code, 4);
    memcpy(reply + 4, errbuf, mlen);
    send_frame(sock, MSG_REFUSED, reply, (uint32_t)(4 + mlen), -1);
}

/* Keeps a message to one printable line. */
static void sanitize_line(char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            *s = ' ';
}

static void describe_death(int status, const struct rusage *ru,
                           const struct worker_limits *lim,
                           struct worker_result *res)
{
    uint64_t cpu = (uint64_t)ru->ru_utime.tv_sec + (uint64_t)ru->ru_stime.tv_sec;
    char *msg = res->errmsg;
    size_t len = sizeof(res->errmsg);
    int sig = WIFSIGNALED(status) ? WTERMSIG(status) : 0;

    if (sig == SIGSYS)
        snprintf(msg, len, "the sandboxed worker was stopped by the seccomp "
                 "filter (it attempted a forbidden system call)");
    else if (sig == SIGXCPU ||
             (sig == SIGKILL && lim->cpu_seconds && cpu >= lim->cpu_seconds))
        snprintf(msg, len, "the sandboxed worker hit the CPU time limit of "
                 "%llu s (--cpu-limit)", (unsigned long long)lim->cpu_seconds);
    else if ((sig == SIGSEGV || sig == SIGABRT || sig == SIGBUS) &&
             lim->memory_bytes)
        snprintf(msg, len, "the sandboxed worker died with signal %d (it may "
                 "have exceeded the memory limit of %llu MiB; --memory-limit)", sig,
                 (unsigned long long)(lim->memory_bytes >> 20));
    else if (sig)
        snprintf(msg, len, "the sandboxed worker died with signal %d", sig);
    else if (WIFEXITED(status) && WEXITSTATUS(status) == 123)
        snprintf(msg, len, "Input/output error (an input file shrank while "
                 "the sandboxed worker read it)");
    else if (WIFEXITED(status) && WEXITSTATUS(status) >= 120 &&
             WEXITSTATUS(status) <= 122)
        snprintf(msg, len, "could not set up the sandbox (step %d)",
                 WEXITSTATUS(status) - 120);
    else
        snprintf(msg, len, "the sandboxed worker exited without an answer");
}

static int wait_readable(int sock, int timeout_ms)
{
    struct pollfd p = { sock, POLLIN, 0 };
    int rc;

    do {
        rc = poll(&p, 1, timeout_ms);
    } while (rc < 0 && errno == EINTR);
    return rc;
}

int worker_run(const struct worker_limits *lim, unsigned ctx_flags,
               worker_job_fn fn, void *job, const int *fds, size_t nfds,
               const struct worker_hooks *hooks, struct worker_result *res)
{
    uint64_t max_out = lim->output_bytes ? lim->output_bytes : DEFAULT_MAX_OUTPUT;
    /* A wall-clock bound too, for a worker that blocks rather than spins. */
    int timeout_ms = lim->cpu_seconds && !lim->no_sandbox
                         ? (int)(lim->cpu_seconds * 2000 + 10000) : -1;
    int sv[2], status = 0, answered = 0, fd_tmp;
    uint8_t *payload = NULL;
    struct rusage ru;
    pid_t pid;

    memset(res, 0, sizeof(*res));
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
        snprintf(res->errmsg, sizeof(res->errmsg), "socketpair: %s", strerror(errno));
        res->sandbox_failure = 1;
        return -1;
    }
    fflush(NULL);
    pid = fork();
    if (pid < 0) {
        snprintf(res->errmsg, sizeof(res->errmsg), "fork: %s", strerror(errno));
        close(sv[0]);
        close(sv[1]);
        res->sandbox_failure = 1;
        return -1;
    }
    if (pid == 0) {
        int local[64];
        size_t i;

        close(sv[0]);
        for (i = 0; i < nfds && i < 64; i++)
            local[i] = fds[i];
        worker_main(lim, ctx_flags, fn, job, sv[1], local, nfds);
        _exit(0);
    }
    close(sv[1]);

    while (!answered) {
        uint32_t hdr[2];

        if (wait_readable(sv[0], timeout_ms) == 0) {
            kill(pid, SIGKILL);
            snprintf(res->errmsg, sizeof(res->errmsg),
                     "the sandboxed worker did not answer within %d s "
                     "(twice the CPU limit plus 10 s; --cpu-limit)",
                     timeout_ms / 1000);
            break;
        }
        if (recv_header(sv[0], hdr, &fd_tmp) < 0)
            break;
        if (fd_tmp >= 0)
            close(fd_tmp);      /* the worker has no business sending fds */
        if (hdr[1] > max_out) {
            snprintf(res->errmsg, sizeof(res->errmsg),
                     "the worker's answer exceeds the output limit (%llu bytes; "
                     "--output-limit)",
                     (unsigned long long)max_out);
            kill(pid, SIGKILL);
            break;
        }
        payload = malloc(hdr[1] ? hdr[1] : 1);
        if (!payload || read_all(sv[0], payload, hdr[1]) < 0) {
            free(payload);
            payload = NULL;
            break;
        }
        switch (hdr[0]) {
        case MSG_OPEN_REF:
            answer_ref(sv[0], payload, hdr[1], hooks ? hooks->ref : NULL,
                       hooks ? hooks->ref_opaque : NULL);
            break;
        case MSG_PARTIAL: {
            struct tree *part = tree_decode(&ins_libc_alloc, payload, hdr[1]);
            int stop = !part || !hooks || !hooks->partial ||
                       hooks->partial(hooks->partial_opaque, part) != 0;

            tree_free(&ins_libc_alloc, part);
            if (stop) {
                if (!res->errmsg[0])
                    snprintf(res->errmsg, sizeof(res->errmsg), "%s",
                             part ? "the job was stopped"
                                  : "the worker's partial answer was malformed");
                kill(pid, SIGKILL);
                answered = -1;
            }
            break;
        }
        case MSG_RESULT:
            res->tree = tree_decode(&ins_libc_alloc, payload, hdr[1]);
            if (res->tree) {
                res->status = INS_OK;
                answered = 1;
            } else {
                snprintf(res->errmsg, sizeof(res->errmsg),
                         "the worker's answer was malformed");
                kill(pid, SIGKILL);
                answered = -1;
            }
            break;
        case MSG_ERROR: {
            int32_t code = INS_EINVAL;
            size_t mlen = hdr[1] >= 5 ? hdr[1] - 5 : 0;

            if (hdr[1] >= 5) {
                memcpy(&code, payload, 4);
                res->errmsg_plain = payload[4] == 1;
            }
            if (code >= 0 || code < INS_ELAST)
                code = INS_EINVAL;
            if (mlen > sizeof(res->errmsg) - 1)
                mlen = sizeof(res->errmsg) - 1;
            memcpy(res->errmsg, payload + (hdr[1] >= 5 ? 5 : 0), mlen);
            res->errmsg[mlen] = '\0';
            sanitize_line(res->errmsg);
            res->status = code;
            answered = 1;
            break;
        }
        default:
            snprintf(res->errmsg, sizeof(res->errmsg),
                     "the worker sent an unknown message");
            kill(pid, SIGKILL);
            answered = -1;
        }
        free(payload);
        payload = NULL;
    }
    close(sv[0]);
    memset(&ru, 0, sizeof(ru));
    while (wait4(pid, &status, 0, &ru) < 0 && errno == EINTR)
        ;
    if (answered == 1)
        return 0;
    if (!res->errmsg[0])
        describe_death(status, &ru, lim, res);
    if (res->tree) {
        tree_free(&ins_libc_alloc, res->tree);
        res->tree = NULL;
    }
    res->status = INS_EIO;
    res->sandbox_failure = 1;
    return -1;
}

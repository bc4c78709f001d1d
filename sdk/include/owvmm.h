/*
 * owvmm.h - crash procedures for programs in an owvmm guest (header only).
 *
 * When the guest kernel crashes, owvmm starts a fresh kernel and its agent (PID 1)
 * recreates the processes of the dead one, with their memory, threads and files. What
 * cannot come back (an established TCP connection, a device) is "lost". A program can
 * register a crash procedure: the agent calls it once, in the process's main thread,
 * after the process was recreated, and the procedure decides:
 *
 *   OW_CONTINUE  go on where the program was (it deals with the lost descriptors);
 *   OW_RESTART   start the program afresh: the same PID, argv (/proc/self/cmdline),
 *                environment (/proc/self/environ, as at the program's start) and cwd,
 *                all signals unblocked, every fd >= 3 closed (sockets abortively, with
 *                a reset, so their ports are free at once), execve("/proc/self/exe").
 *                Save what you want to keep before returning it.
 *
 *   static ow_decision on_crash(const struct ow_crash_info *info, void *arg) {...}
 *   ow_set_crash_procedure(on_crash, NULL);       0, or -1 and errno
 *   ow_set_crash_procedure(NULL, NULL);           removes it (signal 63 back to SIG_DFL)
 *
 * info->crashes counts the crashes this process image survived (1 at the first; an
 * image started by OW_RESTART counts from 0 again). info->lost[0..n_lost) lists what was
 * lost: fd (-1 when not a file descriptor), kind ("tcp", "unix", "device", "file"...) and
 * why ("established connection reset"). These strings live in a block the SDK unmaps when
 * the procedure returns: copy what you keep.
 *
 * Caveats:
 *  - The procedure runs in a signal handler, at an arbitrary point of the program: only
 *    async-signal-safe calls are safe (write, open, fsync, rename...). If the program was
 *    inside malloc or stdio when the kernel crashed, calling them may deadlock.
 *  - It is delivered when signal 63 is unblocked in the main thread. A program may block
 *    it (sigprocmask) outside the points where it is ready, e.g. everywhere but ppoll().
 *    The signal is directed at the main thread: one that has exited never gets it.
 *  - Other threads keep running while it runs; OW_RESTART ends them (execve).
 *  - Signal 63 belongs to the SDK once a procedure is registered.
 *  - Only one procedure per process; state is per translation unit, so register from one
 *    source file.
 *
 * Wire protocol (agent -> process), fixed, version OW_ABI_VERSION:
 *  The agent detects registration by the process's sigaction of signal OW_SIGNAL (63)
 *  having a handler with SA_SIGINFO. It writes a block into a fresh anonymous mapping of
 *  the process at a page-aligned address A and queues OW_SIGNAL to the main thread
 *  (rt_tgsigqueueinfo(pid, pid, 63, info)) with si_code SI_QUEUE and si_value.sival_ptr A.
 *  Block, native endian (x86-64):
 *     0  u64 magic "OWCRASH1" (these 8 bytes in memory order)
 *     8  u32 version = 1
 *    12  u32 n_lost
 *    16  u64 address of the struct ow_lost array (A + 32)
 *    24  u64 map_len, the length of the mapping
 *    32  n_lost struct ow_lost (24 bytes each), pointers absolute, to NUL-terminated
 *        strings later in the block.
 *  Any other signal 63 (another si_code, a NULL or unmapped pointer, another magic or
 *  version, a lost array outside the block) is ignored. After the procedure the SDK
 *  unmaps the block.
 *
 * Needs Linux and POSIX with the GNU/BSD extensions: include this header before any
 * system header (it defines _GNU_SOURCE), or compile with -D_GNU_SOURCE. Works with glibc
 * and musl, dynamic or -static, C99 and later. Build: gcc -static -I DIR/include prog.c
 * (`owvmm sdk DIR` writes this header and an example into DIR).
 */
#ifndef OWVMM_H
#define OWVMM_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#if !defined(SA_RESTART) || !defined(MAP_ANONYMOUS) || !defined(SA_SIGINFO)
#error "owvmm.h needs _GNU_SOURCE: include it before any system header, or compile with -D_GNU_SOURCE"
#endif

#define OW_SIGNAL 63
#define OW_ABI_VERSION 1

typedef enum { OW_CONTINUE = 0, OW_RESTART = 1 } ow_decision;

/* What the crash took: fd is -1 when it is not a file descriptor. */
struct ow_lost {
    int fd;
    const char *kind;
    const char *why;
};

struct ow_crash_info {
    unsigned crashes;            /* crashes this process image survived, 1 at the first */
    unsigned n_lost;             /* entries in lost */
    const struct ow_lost *lost;  /* valid until the procedure returns */
};

typedef ow_decision (*ow_crash_procedure)(const struct ow_crash_info *info, void *arg);

/* ---- implementation: nothing below is API ---- */

/* The agent's block header, at the page-aligned address in si_value. */
struct ow__block {
    unsigned char magic[8];
    uint32_t version;
    uint32_t n_lost;
    uint64_t lost;
    uint64_t map_len;
};

struct ow__state {
    ow_crash_procedure proc;
    void *arg;
    unsigned crashes;
};

#define OW__PAGE 4096u
#define OW__ARGS_CAP (1u << 20) /* bytes of /proc/self/cmdline, and of environ */
#ifdef SYS_close_range
#define OW__SYS_CLOSE_RANGE SYS_close_range
#else
#define OW__SYS_CLOSE_RANGE 436 /* x86-64, older libc headers */
#endif

static inline struct ow__state *ow__state(void) {
    static struct ow__state s;
    return &s;
}

/* The decimal digits of n in buf (12 bytes). */
static inline const char *ow__utoa(unsigned n, char *buf) {
    char *p = buf + 11;
    *p = '\0';
    do
        *--p = (char)('0' + n % 10);
    while ((n /= 10) != 0);
    return p;
}

/* One line on stderr, with write(2) only. */
static inline void ow__say(const char *a, const char *b) {
    ssize_t r;
    r = write(2, "owvmm: crash procedure: ", 24);
    r = write(2, a, strlen(a));
    r = write(2, b, strlen(b));
    r = write(2, "\n", 1);
    (void)r;
}

/* The block a signal carries, or NULL when the signal is not the agent's. */
static inline const struct ow__block *ow__block_of(const siginfo_t *si) {
    const struct ow__block *b;
    unsigned char resident;
    uintptr_t a, lost;
    if (si == NULL || si->si_code != SI_QUEUE)
        return NULL;
    a = (uintptr_t)si->si_value.sival_ptr;
    /* mincore fails on an address that is not mapped: a stray value is not read. */
    if (a == 0 || a % OW__PAGE != 0 || mincore((void *)a, OW__PAGE, &resident) != 0)
        return NULL;
    b = (const struct ow__block *)a;
    if (memcmp(b->magic, "OWCRASH1", 8) != 0 || b->version != OW_ABI_VERSION)
        return NULL;
    if (b->map_len < sizeof *b || b->n_lost > (b->map_len - sizeof *b) / sizeof(struct ow_lost))
        return NULL;
    lost = (uintptr_t)b->lost;
    if (b->n_lost > 0 && (lost < a + sizeof *b ||
                          lost - a > b->map_len - (uint64_t)b->n_lost * sizeof(struct ow_lost)))
        return NULL;
    return b;
}

/* Reads a whole /proc file of NUL-separated strings into a fresh mapping and builds
 * the NULL-terminated pointer array: NULL (said on stderr) when it cannot. */
static inline char **ow__strings(const char *path) {
    char *buf, **v;
    size_t len = 0, n = 0, i, k;
    ssize_t r = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        ow__say("cannot open ", path);
        return NULL;
    }
    buf = (char *)mmap(NULL, OW__ARGS_CAP + 1, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (buf == MAP_FAILED) {
        close(fd);
        ow__say("out of memory reading ", path);
        return NULL;
    }
    while (len <= OW__ARGS_CAP && (r = read(fd, buf + len, OW__ARGS_CAP + 1 - len)) != 0) {
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            break;
        len += (size_t)r;
    }
    close(fd);
    if (r < 0 || len > OW__ARGS_CAP) {
        munmap(buf, OW__ARGS_CAP + 1);
        ow__say(r < 0 ? "cannot read " : "larger than 1 MiB: ", path);
        return NULL;
    }
    if (len > 0 && buf[len - 1] != '\0')
        buf[len++] = '\0';
    for (i = 0; i < len; i++)
        n += buf[i] == '\0';
    v = (char **)mmap(NULL, (n + 1) * sizeof *v, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (v == MAP_FAILED) {
        munmap(buf, OW__ARGS_CAP + 1);
        ow__say("out of memory reading ", path);
        return NULL;
    }
    for (i = 0, k = 0; i < len; i += strlen(buf + i) + 1)
        v[k++] = buf + i;
    v[k] = NULL;
    return v;
}

/* A getdents64 record. */
struct ow__dirent64 {
    uint64_t ino;
    int64_t off;
    unsigned short reclen;
    unsigned char type;
    char name[];
};

/* Makes every socket >= 3 close abortively (SO_LINGER 0: a reset rather than a FIN), so
 * that the ports of the old connections are free at once for the new image. */
static inline void ow__reset_sockets(void) {
    char buf[4096];
    long n, off;
    int dfd = open("/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0)
        return;
    while ((n = syscall(SYS_getdents64, dfd, buf, sizeof buf)) > 0) {
        for (off = 0; off < n;) {
            const struct ow__dirent64 *d = (const struct ow__dirent64 *)(const void *)(buf + off);
            const char *c = d->name;
            int fd = 0, type;
            socklen_t len = sizeof type;
            off += d->reclen;
            if (d->reclen == 0)
                break;
            if (*c < '0' || *c > '9')
                continue;
            for (; *c >= '0' && *c <= '9' && fd < (1 << 24); c++)
                fd = fd * 10 + (*c - '0');
            if (fd >= 3 && fd != dfd && getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) == 0) {
                struct linger lg;
                lg.l_onoff = 1;
                lg.l_linger = 0;
                setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
            }
        }
    }
    close(dfd);
}

/* OW_RESTART: returns only when the program cannot be restarted (and goes on). */
static inline void ow__restart(void) {
    char **argv, **envp, num[12];
    sigset_t none;
    struct rlimit rl;
    if ((argv = ow__strings("/proc/self/cmdline")) == NULL || argv[0] == NULL ||
        (envp = ow__strings("/proc/self/environ")) == NULL) {
        ow__say("cannot restart, the program goes on", "");
        return;
    }
    ow__reset_sockets();
    if (syscall(OW__SYS_CLOSE_RANGE, 3u, ~0u, 0) != 0) {
        unsigned long fd, max = 1u << 20;
        if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < max)
            max = (unsigned long)rl.rlim_cur;
        for (fd = 3; fd < max; fd++)
            close((int)fd);
    }
    /* The handler's mask would be inherited by the new image. */
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    execve("/proc/self/exe", argv, envp);
    ow__say("execve /proc/self/exe failed, errno ", ow__utoa((unsigned)errno, num));
    _exit(127);
}

static inline void ow__handler(int sig, siginfo_t *si, void *uctx) {
    int saved_errno = errno;
    const struct ow__block *b = ow__block_of(si);
    struct ow__state *s = ow__state();
    (void)sig;
    (void)uctx;
    if (b != NULL && s->proc != NULL) {
        struct ow_crash_info info;
        ow_decision d;
        size_t map_len = (size_t)b->map_len;
        info.crashes = ++s->crashes;
        info.n_lost = b->n_lost;
        info.lost = (const struct ow_lost *)(uintptr_t)b->lost;
        d = s->proc(&info, s->arg);
        munmap((void *)(uintptr_t)b, map_len);
        if (d == OW_RESTART)
            ow__restart();
    }
    errno = saved_errno;
}

/* Registers (or replaces) the crash procedure; proc NULL removes it. 0, or -1 and errno.
 * static inline like the rest, so that the header can be included in several files. */
static inline int ow_set_crash_procedure(ow_crash_procedure proc, void *arg) {
    struct ow__state *s = ow__state();
    struct ow__state was = *s;
    struct sigaction sa;
    sigset_t only, old;
    int r, e;
    memset(&sa, 0, sizeof sa);
    sigemptyset(&sa.sa_mask);
    if (proc == NULL) {
        sa.sa_handler = SIG_DFL;
    } else {
        sa.sa_sigaction = ow__handler;
        sa.sa_flags = SA_SIGINFO | SA_RESTART;
    }
    /* No delivery in this thread between the stores. */
    sigemptyset(&only);
    sigaddset(&only, OW_SIGNAL);
    sigprocmask(SIG_BLOCK, &only, &old);
    s->proc = proc;
    s->arg = proc != NULL ? arg : NULL;
    r = sigaction(OW_SIGNAL, &sa, NULL);
    e = errno;
    if (r != 0) {
        s->proc = was.proc;
        s->arg = was.arg;
    }
    sigprocmask(SIG_SETMASK, &old, NULL);
    errno = e;
    return r == 0 ? 0 : -1;
}

#endif /* OWVMM_H */

/*
 * Ordinary programs that the recovery tests run inside a guest and expect to survive a
 * guest kernel crash. They know nothing of owvmm: they print what they observe on stdout,
 * and the tests read the guest console.
 *
 *   owtest heap MIB      a checksummed heap of MIB MiB; every second: count, change one
 *                        word, re-verify the whole checksum (prints "sum=ok" or "sum=BAD")
 *   owtest threads FILE  3 worker threads counting, the main thread appending a line to
 *                        FILE every second and checking the whole file ("file=ok"), and
 *                        raising SIGUSR1 on itself every other second: its handler counts
 *                        them (a lost handler would kill the process)
 *   owtest sleeper       blocked in nanosleep(1000 s); an EINTR is printed and retried
 *   owtest unixpair      a socket pair between a parent writing numbers as fast as it can
 *                        (it blocks when the socket is full) and a child reading them one
 *                        byte at a time, 5 a second; the child prints each number and
 *                        whether it is the one after the last ("ok=yes")
 *   owtest events        an epoll loop over a periodic timerfd (0.5 s) and a signalfd
 *                        (SIGUSR2, blocked): each tick raises SIGUSR2 and adds 1 to an
 *                        eventfd, every 4th tick reads the eventfd and checks it held what
 *                        was added since ("efd=ok"); prints the ticks and signals seen
 *   owtest family       a parent with two children: one that exited at once (a zombie
 *                        the parent does not reap yet) and one in its own process group
 *                        that waits for SIGUSR1, copying word 0 of a page they share
 *                        (MAP_SHARED anonymous) to word 1 every 50 ms. Every 0.5 s (n=)
 *                        the parent writes n to word 0 and, 0.5 s later, prints its
 *                        session and group, the child's group, whether the zombie is
 *                        still there (waitid WNOWAIT), and whether the child copied
 *                        back what it wrote (shared=yes); at n=30 it signals the child and
 *                        reaps both, printing their exit statuses, then "family done"
 *   owtest pending      blocks SIGUSR1 and SIGRTMIN, sends itself SIGUSR1 (kill) and
 *                        SIGRTMIN twice (sigqueue, values 42 and 43), and prints every
 *                        second (n=) whether they are pending; at n=60 it takes them
 *                        (sigtimedwait) and prints what it got, in order ("got="), then
 *                        "pending done"
 *   owtest bigwrite     a child writes a byte stream (each 8-byte word its own index) into
 *                        a pipe in 256 KiB writes, resuming a write cut short where it
 *                        stopped (and printing "short=" each time) and retrying one that
 *                        failed with EINTR whole; the parent reads 4 KiB every 100 ms,
 *                        checks every byte is the next one of the stream, and prints every
 *                        second (n=) how much it read and whether all was right ("ok=yes";
 *                        a byte written twice or lost makes it "ok=no" for good)
 *   owtest creds        drops from root to uids 1000,1001,1002, gids 100,101,102, groups
 *                        5,27, keeping CAP_KILL and CAP_NET_BIND_SERVICE (the latter also
 *                        inheritable and ambient), CAP_SYS_MODULE out of its bounding set;
 *                        prints every second (n=) its ids, groups, capability sets and
 *                        dumpable flag as the kernel reports them
 *   owtest timers       an ITIMER_REAL of 1 s (period 1 s) counting SIGALRMs, a
 *                        CLOCK_MONOTONIC POSIX timer of 0.5 s (period 0.5 s) sending
 *                        SIGRTMIN with the value 42 (counted, the value checked), and a
 *                        CLOCK_BOOTTIME one set to fire in 3600 s (SIGRTMIN+1). Every
 *                        second (n=) it prints the counts, the two POSIX timers' ids, the
 *                        fast one's timer_getoverrun, the time left of the ITIMER_REAL
 *                        and of the long timer in ms (left=; timer_gettime) and whether
 *                        every call on the ids worked (ok=yes)
 *   owtest memfd        a memory file (memfd_create "owtest-data") of 1 MiB + 5 bytes, its
 *                        first 200 KiB a known pattern and "tail" at 900000, its position at
 *                        12345, its first page also mapped shared; every second (n=) it
 *                        writes n through the mapping, reads it back through the
 *                        descriptor (shared=ok), checks the pattern, the size and the
 *                        position (data=ok) and prints them
 *   owtest corrupt INIT_TASK TASKS PID MM MT_ROOT
 *                        (a hostile-kernel test, not an ordinary program) starts three
 *                        children that sleep, then corrupts the running kernel's view of
 *                        them through /dev/mem: the first gets a wild mm pointer, the
 *                        second's memory-area tree a node pointing at itself, the third's
 *                        task-list link a cycle. Arguments: init_task's address (hex) and
 *                        the byte offsets of task_struct.tasks, .pid, .mm and
 *                        mm_struct.mm_mt.ma_root, which the test reads from the BTF.
 *
 * Each line starts with the mode and "pid=<getpid()>".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <grp.h>
#include <linux/capability.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/epoll.h>
#include <sys/inotify.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>
#include <sys/wait.h>
#include <unistd.h>

static void sleep_1s(void) {
    struct timespec t = {1, 0};
    while (nanosleep(&t, &t) != 0 && errno == EINTR) {
    }
}

static uint64_t mix(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    return x;
}

static int heap(long mib) {
    size_t n = (size_t)mib * (1 << 20) / sizeof(uint64_t);
    uint64_t *h = malloc(n * sizeof(uint64_t));
    if (!h) {
        printf("heap pid=%d malloc failed\n", getpid());
        return 1;
    }
    uint64_t sum = 0;
    for (size_t i = 0; i < n; i++) {
        h[i] = mix(i + 1);
        sum += h[i];
    }
    /* Some FPU state that must survive too. */
    volatile double f = 1.0;
    for (unsigned long count = 1;; count++) {
        size_t i = mix(count) % n;
        sum -= h[i];
        h[i] = mix(h[i] ^ count);
        sum += h[i];
        f *= 1.0001;
        uint64_t check = 0;
        for (size_t j = 0; j < n; j++)
            check += h[j];
        printf("heap pid=%d count=%lu mib=%ld sum=%s f=%.4f\n", getpid(), count, mib,
               check == sum ? "ok" : "BAD", (double)f);
        fflush(stdout);
        sleep_1s();
    }
}

static volatile unsigned long worker_counts[3];
static volatile sig_atomic_t usr1;

static void on_usr1(int sig) {
    (void)sig;
    usr1++;
}

static void *worker(void *arg) {
    volatile unsigned long *c = arg;
    for (;;) {
        (*c)++;
        struct timespec t = {0, 100 * 1000 * 1000};
        nanosleep(&t, NULL);
    }
    return NULL;
}

/* Does FILE hold exactly "line 1\n" .. "line N\n"? */
static int file_ok(const char *file, unsigned long n) {
    static char buf[1 << 20];
    int fd = open(file, O_RDONLY);
    if (fd < 0)
        return 0;
    ssize_t len = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (len < 0)
        return 0;
    buf[len] = 0;
    char *p = buf;
    for (unsigned long i = 1; i <= n; i++) {
        char want[32];
        int w = snprintf(want, sizeof want, "line %lu\n", i);
        if (strncmp(p, want, (size_t)w) != 0)
            return 0;
        p += w;
    }
    return *p == 0;
}

static int threads(const char *file) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sa.sa_flags = SA_RESTART;
    sigaction(SIGUSR1, &sa, NULL);
    int fd = open(file, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd < 0) {
        printf("threads pid=%d open %s: %s\n", getpid(), file, strerror(errno));
        return 1;
    }
    pthread_t t[3];
    for (int i = 0; i < 3; i++)
        pthread_create(&t[i], NULL, worker, (void *)&worker_counts[i]);
    for (unsigned long count = 1;; count++) {
        char line[64];
        int len = snprintf(line, sizeof line, "line %lu\n", count);
        ssize_t w;
        /* A write cut off by the crash comes back as EINTR: do it again. */
        while ((w = write(fd, line, (size_t)len)) < 0 && errno == EINTR) {
        }
        if (w != len) {
            printf("threads pid=%d write failed: %s\n", getpid(), strerror(errno));
            fflush(stdout);
        }
        if (count % 2 == 0)
            kill(getpid(), SIGUSR1);
        off_t off = lseek(fd, 0, SEEK_CUR);
        printf("threads pid=%d count=%lu off=%ld file=%s t=%lu,%lu,%lu usr1=%d\n", getpid(),
               count, (long)off, file_ok(file, count) ? "ok" : "BAD", worker_counts[0],
               worker_counts[1], worker_counts[2], (int)usr1);
        fflush(stdout);
        sleep_1s();
    }
}

static int sleeper(void) __attribute__((noreturn));
static int sleeper(void) {
    printf("sleeper pid=%d sleeping\n", getpid());
    fflush(stdout);
    for (unsigned long n = 1;; n++) {
        struct timespec t = {1000, 0};
        if (nanosleep(&t, NULL) != 0) {
            printf("sleeper pid=%d nanosleep returned %s (%lu); retrying\n", getpid(),
                   errno == EINTR ? "EINTR" : strerror(errno), n);
            fflush(stdout);
        }
    }
}

static int devmem = -1;

/* Kernel virtual to guest-physical: the image is loaded at its link address, the rest is
 * the direct map (no KASLR in the test kernel). */
static uint64_t pa_of(uint64_t va) {
    if (va >= 0xffffffff80000000ULL)
        return va - 0xffffffff80000000ULL;
    return va - 0xffff888000000000ULL;
}

static uint64_t rd(uint64_t va) {
    uint64_t v = 0;
    if (pread(devmem, &v, sizeof v, (off_t)pa_of(va)) != (ssize_t)sizeof v)
        return 0;
    return v;
}

static int wr(uint64_t va, uint64_t v) {
    return pwrite(devmem, &v, sizeof v, (off_t)pa_of(va)) == (ssize_t)sizeof v ? 0 : -1;
}

static uint64_t find_task(uint64_t init_task, long tasks, long pid_off, pid_t pid) {
    uint64_t head = init_task + tasks, cur = rd(head);
    for (int i = 0; i < 100000 && cur != head && cur != 0; i++) {
        uint64_t t = cur - tasks;
        int32_t p = 0;
        if (pread(devmem, &p, sizeof p, (off_t)pa_of(t + pid_off)) == (ssize_t)sizeof p && p == pid)
            return t;
        cur = rd(cur);
    }
    return 0;
}

static pid_t victim(int many_areas) {
    pid_t p = fork();
    if (p != 0)
        return p;
    if (many_areas) {
        /* Enough separate areas that the tree has an internal root node. */
        for (int i = 0; i < 64; i++) {
            char *m = mmap(NULL, 4096, (i & 1) ? PROT_READ : PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (m != MAP_FAILED && !(i & 1))
                m[0] = 1;
        }
    }
    for (;;)
        pause();
}

static int corrupt(char **argv) {
    uint64_t init_task = strtoull(argv[2], NULL, 16);
    long tasks = atol(argv[3]), pid_off = atol(argv[4]), mm_off = atol(argv[5]),
         root_off = atol(argv[6]);
    devmem = open("/dev/mem", O_RDWR);
    if (devmem < 0) {
        printf("corrupt pid=%d cannot open /dev/mem: %s\n", getpid(), strerror(errno));
        return 1;
    }
    pid_t a = victim(0), b = victim(1), c = victim(0);
    sleep_1s();
    sleep_1s();
    uint64_t ta = find_task(init_task, tasks, pid_off, a);
    uint64_t tb = find_task(init_task, tasks, pid_off, b);
    uint64_t tc = find_task(init_task, tasks, pid_off, c);
    if (!ta || !tb || !tc) {
        printf("corrupt pid=%d victims not found in the task list\n", getpid());
        return 1;
    }
    /* a: an mm far outside guest memory. */
    int ok_a = wr(ta + mm_off, 0xffff88ffdead0000ULL) == 0;
    /* b: the root node's first slot points at the root node itself. */
    uint64_t mm = rd(tb + mm_off), root = rd(mm + root_off);
    unsigned type = (unsigned)(root >> 3) & 0xf;
    long slot0 = type == 3 ? 80 : 128; /* maple_arange_64 : maple_range_64 */
    int ok_b = (root & 3) == 2 && root > 4096 && type >= 2 && wr((root & ~0xffULL) + slot0, root) == 0;
    /* c: its task-list link points back at itself (last: it breaks the walk above). */
    int ok_c = wr(tc + tasks, tc + tasks) == 0;
    printf("corrupt pid=%d wild=%d:%s maple=%d:%s cycle=%d:%s\n", getpid(), a, ok_a ? "ok" : "failed",
           b, ok_b ? "ok" : "failed", c, ok_c ? "ok" : "failed");
    fflush(stdout);
    return 0;
}

static void write_all(int fd, const char *b, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, b, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            _exit(3);
        b += w;
        n -= (size_t)w;
    }
}

static int unixpair(void) {
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) {
        printf("unixpair pid=%d socketpair: %s\n", getpid(), strerror(errno));
        return 1;
    }
    pid_t c = fork();
    if (c == 0) {
        close(sv[0]);
        unsigned long expect = 1;
        char line[32];
        size_t at = 0;
        for (;;) {
            char ch;
            ssize_t r = read(sv[1], &ch, 1);
            if (r < 0 && errno == EINTR)
                continue;
            if (r <= 0) {
                printf("unixpair pid=%d eof after %lu\n", getpid(), expect - 1);
                return 1;
            }
            if (ch != '\n' && at < sizeof line - 1) {
                line[at++] = ch;
                continue;
            }
            line[at] = 0;
            at = 0;
            unsigned long n = strtoul(line, NULL, 10);
            printf("unixpair pid=%d n=%lu ok=%s\n", getpid(), n, n == expect ? "yes" : "NO");
            expect = n + 1;
            struct timespec t = {0, 200000000};
            while (nanosleep(&t, &t) != 0 && errno == EINTR) {
            }
        }
    }
    close(sv[1]);
    for (unsigned long i = 1;; i++) {
        char b[32];
        int n = snprintf(b, sizeof b, "%lu\n", i);
        write_all(sv[0], b, (size_t)n);
    }
}

static int events(void) {
    int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC);
    struct itimerspec its = {{0, 500000000}, {0, 500000000}};
    sigset_t usr2;
    sigemptyset(&usr2);
    sigaddset(&usr2, SIGUSR2);
    sigprocmask(SIG_BLOCK, &usr2, NULL);
    int sfd = signalfd(-1, &usr2, SFD_CLOEXEC);
    int efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (tfd < 0 || sfd < 0 || efd < 0 || ep < 0 || timerfd_settime(tfd, 0, &its, NULL) != 0) {
        printf("events pid=%d setup failed: %s\n", getpid(), strerror(errno));
        return 1;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 0x7100};
    epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &ev);
    ev.data.u64 = 0x5100;
    epoll_ctl(ep, EPOLL_CTL_ADD, sfd, &ev);
    unsigned long ticks = 0, sigs = 0, added = 0, bad = 0;
    for (;;) {
        struct epoll_event got[4];
        int n = epoll_wait(ep, got, 4, -1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            printf("events pid=%d epoll_wait: %s\n", getpid(), strerror(errno));
            return 1;
        }
        for (int i = 0; i < n; i++) {
            if (got[i].data.u64 == 0x7100) {
                uint64_t t;
                if (read(tfd, &t, 8) != 8)
                    continue;
                ticks += t;
                uint64_t one = 1;
                if (write(efd, &one, 8) == 8)
                    added++;
                raise(SIGUSR2);
                if (ticks % 4 == 0) {
                    uint64_t v = 0;
                    if (read(efd, &v, 8) != 8 || v != added)
                        bad++;
                    added = 0;
                }
                printf("events pid=%d n=%lu sig=%lu efd=%s\n", getpid(), ticks, sigs,
                       bad ? "BAD" : "ok");
            } else if (got[i].data.u64 == 0x5100) {
                struct signalfd_siginfo si;
                if (read(sfd, &si, sizeof si) == sizeof si && si.ssi_signo == SIGUSR2)
                    sigs++;
            } else {
                printf("events pid=%d unknown epoll data %llx\n", getpid(),
                       (unsigned long long)got[i].data.u64);
            }
        }
    }
}

static void on_family_usr1(int sig) {
    (void)sig;
    _exit(3);
}

static int family(void) {
    pid_t z = fork();
    if (z == 0)
        _exit(7);
    /* One shared page: the parent writes its count in word 0, the child copies it to
     * word 1 every 50 ms; the parent checks it got back what it wrote. */
    volatile long *shm = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
                              -1, 0);
    if (shm == MAP_FAILED) {
        printf("family pid=%d mmap failed\n", getpid());
        return 1;
    }
    pid_t c = fork();
    if (c == 0) {
        signal(SIGUSR1, on_family_usr1);
        setpgid(0, 0);
        for (;;) {
            struct timespec ts = {0, 50 * 1000 * 1000};
            shm[1] = shm[0];
            nanosleep(&ts, NULL);
        }
    }
    if (z < 0 || c < 0) {
        printf("family pid=%d fork failed\n", getpid());
        return 1;
    }
    setpgid(c, c);
    for (int tick = 1; tick <= 30; tick++) {
        struct timespec ts = {0, 500 * 1000 * 1000};
        shm[0] = tick;
        nanosleep(&ts, NULL);
        int shared = shm[1] == tick;
        siginfo_t si;
        memset(&si, 0, sizeof si);
        int zr = waitid(P_PID, (id_t)z, &si, WEXITED | WNOHANG | WNOWAIT);
        int zombie = zr == 0 && si.si_pid == z;
        printf("family pid=%d n=%d sid=%d pgid=%d child=%d child_pgid=%d zombie=%s "
               "shared=%s\n",
               getpid(), tick, getsid(0), getpgid(0), c, getpgid(c),
               zombie ? "yes" : (zr == 0 ? "gone" : strerror(errno)), shared ? "yes" : "no");
    }
    kill(c, SIGUSR1);
    int st = 0;
    pid_t r = waitpid(c, &st, 0);
    printf("family pid=%d reaped child=%d ok=%s status=%d\n", getpid(), c,
           r == c ? "yes" : strerror(errno), WIFEXITED(st) ? WEXITSTATUS(st) : -1);
    st = 0;
    r = waitpid(z, &st, 0);
    printf("family pid=%d reaped zombie=%d ok=%s status=%d\n", getpid(), z,
           r == z ? "yes" : strerror(errno), WIFEXITED(st) ? WEXITSTATUS(st) : -1);
    printf("family pid=%d done\n", getpid());
    return 0;
}

static int pending(void) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    sigaddset(&set, SIGRTMIN);
    sigprocmask(SIG_BLOCK, &set, NULL);
    union sigval v = {.sival_int = 42};
    sigqueue(getpid(), SIGRTMIN, v);
    v.sival_int = 43;
    sigqueue(getpid(), SIGRTMIN, v);
    kill(getpid(), SIGUSR1);
    for (int n = 1; n <= 60; n++) {
        sigset_t p;
        sigpending(&p);
        printf("pending pid=%d n=%d usr1=%s rtmin=%s\n", getpid(), n,
               sigismember(&p, SIGUSR1) ? "yes" : "no", sigismember(&p, SIGRTMIN) ? "yes" : "no");
        sleep_1s();
    }
    /* Lowest number first; a real-time signal once per sigqueue, with its value. */
    char got[256] = "";
    size_t used = 0;
    for (int i = 0; i < 8 && used < sizeof got - 32; i++) {
        struct timespec zero = {0, 0};
        siginfo_t si;
        int s = sigtimedwait(&set, &si, &zero);
        if (s < 0)
            break;
        if (s == SIGRTMIN)
            used += (size_t)snprintf(got + used, sizeof got - used, "rtmin:%d,", si.si_value.sival_int);
        else
            used += (size_t)snprintf(got + used, sizeof got - used, "%d,", s);
    }
    printf("pending pid=%d got=%s\n", getpid(), got);
    printf("pending pid=%d done\n", getpid());
    return 0;
}

/* Byte `p` of the bigwrite stream: the little-endian bytes of word p / 8, whose value is
 * its index. */
static unsigned char stream_byte(uint64_t p) {
    return (unsigned char)((p / 8) >> (8 * (p % 8)));
}

static int bigwrite(void) {
    int fds[2];
    if (pipe(fds) != 0) {
        printf("bigwrite pid=%d pipe failed: %s\n", getpid(), strerror(errno));
        return 1;
    }
    pid_t w = fork();
    if (w < 0) {
        printf("bigwrite pid=%d fork failed: %s\n", getpid(), strerror(errno));
        return 1;
    }
    if (w == 0) {
        close(fds[0]);
        enum { CHUNK = 256 * 1024 };
        static unsigned char buf[CHUNK];
        uint64_t pos = 0;
        long shorts = 0;
        for (;;) {
            for (uint64_t i = 0; i < CHUNK; i++)
                buf[i] = stream_byte(pos + i);
            size_t done = 0;
            while (done < CHUNK) {
                ssize_t n = write(fds[1], buf + done, CHUNK - done);
                if (n < 0 && errno == EINTR) {
                    printf("bigwrite pid=%d eintr at=%llu\n", getpid(),
                           (unsigned long long)(pos + done));
                    continue;
                }
                if (n <= 0) {
                    printf("bigwrite pid=%d write failed: %s\n", getpid(), strerror(errno));
                    _exit(1);
                }
                done += (size_t)n;
                if (done < CHUNK) {
                    shorts++;
                    printf("bigwrite pid=%d short=%ld wrote=%zd at=%llu\n", getpid(), shorts, n,
                           (unsigned long long)(pos + done));
                }
            }
            pos += CHUNK;
        }
    }
    close(fds[1]);
    unsigned char buf[4096];
    uint64_t pos = 0;
    int ok = 1;
    for (int n = 1;; n++) {
        for (int r = 0; r < 10; r++) {
            struct timespec ts = {0, 100 * 1000 * 1000};
            nanosleep(&ts, NULL);
            ssize_t got = read(fds[0], buf, sizeof buf);
            if (got < 0 && errno == EINTR)
                continue;
            if (got <= 0) {
                printf("bigwrite pid=%d read failed: %s\n", getpid(),
                       got == 0 ? "end of file" : strerror(errno));
                return 1;
            }
            for (ssize_t i = 0; i < got; i++) {
                if (ok && buf[i] != stream_byte(pos + (uint64_t)i)) {
                    ok = 0;
                    printf("bigwrite pid=%d bad byte at=%llu\n", getpid(),
                           (unsigned long long)(pos + (uint64_t)i));
                }
            }
            pos += (uint64_t)got;
        }
        printf("bigwrite pid=%d n=%d writer=%d read=%llu ok=%s\n", getpid(), n, w,
               (unsigned long long)pos, ok ? "yes" : "no");
    }
}

/* The value after `key` in /proc/self/status, tabs made commas, into out. */
static void status_field(const char *key, char *out, size_t n) {
    snprintf(out, n, "?");
    FILE *f = fopen("/proc/self/status", "r");
    if (!f)
        return;
    char line[512];
    size_t k = strlen(key);
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, key, k) != 0)
            continue;
        char *v = line + k;
        while (*v == '\t' || *v == ' ')
            v++;
        size_t j = 0;
        for (; *v && *v != '\n' && j + 1 < n; v++)
            out[j++] = (*v == '\t' || *v == ' ') ? ',' : *v;
        while (j > 0 && out[j - 1] == ',')
            j--;
        out[j] = 0;
        if (j == 0)
            snprintf(out, n, "-");
        break;
    }
    fclose(f);
}

static int creds(void) {
    struct __user_cap_header_struct hdr = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct data[2];
    gid_t groups[] = {5, 27};
    const unsigned keep = (1u << CAP_KILL) | (1u << CAP_NET_BIND_SERVICE);
    memset(data, 0, sizeof data);
    data[0].effective = data[0].permitted = keep;
    data[0].inheritable = 1u << CAP_NET_BIND_SERVICE;
    if (prctl(PR_CAPBSET_DROP, CAP_SYS_MODULE, 0, 0, 0) != 0 || setgroups(2, groups) != 0 ||
        setresgid(100, 101, 102) != 0 || prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0 ||
        setresuid(1000, 1001, 1002) != 0 || syscall(SYS_capset, &hdr, data) != 0 ||
        prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_NET_BIND_SERVICE, 0, 0) != 0 ||
        prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0) != 0) {
        printf("creds pid=%d setup failed: %s\n", getpid(), strerror(errno));
        return 1;
    }
    prctl(PR_SET_DUMPABLE, 1, 0, 0, 0);
    for (int n = 1;; n++) {
        char uid[64], gid[64], grp[128], inh[32], prm[32], eff[32], bnd[32], amb[32];
        status_field("Uid:", uid, sizeof uid);
        status_field("Gid:", gid, sizeof gid);
        status_field("Groups:", grp, sizeof grp);
        status_field("CapInh:", inh, sizeof inh);
        status_field("CapPrm:", prm, sizeof prm);
        status_field("CapEff:", eff, sizeof eff);
        status_field("CapBnd:", bnd, sizeof bnd);
        status_field("CapAmb:", amb, sizeof amb);
        printf("creds pid=%d n=%d uid=%s gid=%s groups=%s inh=%s prm=%s eff=%s bnd=%s amb=%s "
               "dumpable=%d\n",
               getpid(), n, uid, gid, grp, inh, prm, eff, bnd, amb,
               prctl(PR_GET_DUMPABLE, 0, 0, 0, 0));
        struct timespec ts = {1, 0};
        nanosleep(&ts, NULL);
    }
}

static volatile sig_atomic_t alarms, rt_fast, rt_slow, rt_bad_value;

static void on_alarm(int s) {
    (void)s;
    alarms++;
}

static void on_timer(int s, siginfo_t *si, void *u) {
    (void)u;
    if (s == SIGRTMIN) {
        rt_fast++;
        if (si->si_value.sival_int != 42)
            rt_bad_value++;
    } else {
        rt_slow++;
    }
}

static int timers(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alarm;
    sigaction(SIGALRM, &sa, NULL);
    sa.sa_sigaction = on_timer;
    sa.sa_flags = SA_SIGINFO;
    sigaction(SIGRTMIN, &sa, NULL);
    sigaction(SIGRTMIN + 1, &sa, NULL);
    struct itimerval it = {{1, 0}, {1, 0}};
    if (setitimer(ITIMER_REAL, &it, NULL) != 0) {
        printf("timers pid=%d setitimer: %s\n", getpid(), strerror(errno));
        return 1;
    }
    timer_t fast, slow;
    struct sigevent ev;
    memset(&ev, 0, sizeof ev);
    ev.sigev_notify = SIGEV_SIGNAL;
    ev.sigev_signo = SIGRTMIN;
    ev.sigev_value.sival_int = 42;
    struct itimerspec half = {{0, 500000000}, {0, 500000000}};
    struct itimerspec hour = {{0, 0}, {3600, 0}};
    if (timer_create(CLOCK_MONOTONIC, &ev, &fast) != 0 || timer_settime(fast, 0, &half, NULL) != 0) {
        printf("timers pid=%d fast timer: %s\n", getpid(), strerror(errno));
        return 1;
    }
    ev.sigev_signo = SIGRTMIN + 1;
    ev.sigev_value.sival_int = 43;
    if (timer_create(CLOCK_BOOTTIME, &ev, &slow) != 0 || timer_settime(slow, 0, &hour, NULL) != 0) {
        printf("timers pid=%d slow timer: %s\n", getpid(), strerror(errno));
        return 1;
    }
    for (long n = 1;; n++) {
        struct itimerspec f, l;
        struct itimerval r;
        int ok = timer_gettime(fast, &f) == 0 && timer_gettime(slow, &l) == 0 &&
                 getitimer(ITIMER_REAL, &r) == 0 && f.it_interval.tv_nsec == 500000000 &&
                 r.it_interval.tv_sec == 1;
        int over = timer_getoverrun(fast);
        printf("timers pid=%d n=%ld alarms=%d rt=%d slowrt=%d value=%s fast=%ld slow=%ld "
               "overrun=%d real=%ld left=%ld ok=%s\n",
               getpid(), n, (int)alarms, (int)rt_fast, (int)rt_slow, rt_bad_value ? "bad" : "ok",
               (long)(intptr_t)fast, (long)(intptr_t)slow, over,
               (long)r.it_value.tv_sec * 1000 + r.it_value.tv_usec / 1000,
               (long)l.it_value.tv_sec * 1000 + l.it_value.tv_nsec / 1000000,
               ok && over >= 0 ? "yes" : "no");
        sleep_1s();
    }
}

static int memfd(void) {
    enum { PATTERN = 200 * 1024, SIZE = 1024 * 1024 + 5, TAIL = 900000, POS = 12345 };
    int fd = memfd_create("owtest-data", 0);
    if (fd < 0 || ftruncate(fd, SIZE) != 0) {
        printf("memfd pid=%d setup failed: %s\n", getpid(), strerror(errno));
        return 1;
    }
    static unsigned char buf[PATTERN];
    for (int i = 0; i < PATTERN; i++)
        buf[i] = (unsigned char)(i * 7 + 3);
    volatile uint32_t *page = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (pwrite(fd, buf, PATTERN, 0) != PATTERN || pwrite(fd, "tail", 4, TAIL) != 4 ||
        lseek(fd, POS, SEEK_SET) != POS || page == MAP_FAILED) {
        printf("memfd pid=%d setup failed: %s\n", getpid(), strerror(errno));
        return 1;
    }
    for (int n = 1;; n++) {
        /* Word 1000 (offset 4000) goes through the mapping; byte 4000..4003 of the pattern
         * is replaced by it. */
        page[1000] = (uint32_t)n;
        uint32_t back = 0;
        int shared = pread(fd, &back, 4, 4000) == 4 && back == (uint32_t)n;
        static unsigned char now[PATTERN];
        int data = pread(fd, now, PATTERN, 0) == PATTERN;
        for (int i = 0; data && i < PATTERN; i++)
            if ((i < 4000 || i >= 4004) && now[i] != buf[i])
                data = 0;
        char tail[5] = {0};
        struct stat st;
        data = data && pread(fd, tail, 4, TAIL) == 4 && strcmp(tail, "tail") == 0 &&
               fstat(fd, &st) == 0 && st.st_size == SIZE;
        off_t pos = lseek(fd, 0, SEEK_CUR);
        printf("memfd pid=%d n=%d size=%lld pos=%lld data=%s shared=%s\n", getpid(), n,
               (long long)st.st_size, (long long)pos, data && pos == POS ? "ok" : "bad",
               shared ? "ok" : "bad");
        struct timespec ts = {1, 0};
        nanosleep(&ts, NULL);
    }
}

/* Sends message k on `s` with three descriptors in flight that only the message holds:
 * the read end of a pipe holding "pipe k", a file opened at position 5, and one end of a
 * socket pair whose other end (kept in *peer) has sent "sock k". *wpipe keeps the pipe's
 * write end. */
static int passfd_send(int s, unsigned n, int *wpipe, int *peer) {
    char msg[16], b[16];
    int p[2], sp[2];
    snprintf(msg, sizeof msg, "msg %06u", n);
    if (pipe(p) != 0 || socketpair(AF_UNIX, SOCK_STREAM, 0, sp) != 0)
        return -1;
    int f = open("/tmp/passfd.txt", O_RDWR);
    if (f < 0 || lseek(f, 5, SEEK_SET) != 5)
        return -1;
    int len = snprintf(b, sizeof b, "pipe %u", n);
    write_all(p[1], b, (size_t)len);
    len = snprintf(b, sizeof b, "sock %u", n);
    write_all(sp[1], b, (size_t)len);
    int fds[3] = {p[0], f, sp[0]};
    char control[CMSG_SPACE(sizeof fds)];
    memset(control, 0, sizeof control);
    struct iovec iov = {msg, 10};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control,
                        .msg_controllen = sizeof control};
    struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof fds);
    memcpy(CMSG_DATA(c), fds, sizeof fds);
    ssize_t r;
    while ((r = sendmsg(s, &mh, 0)) < 0 && errno == EINTR) {
    }
    close(p[0]);
    close(f);
    close(sp[0]);
    *wpipe = p[1];
    *peer = sp[1];
    return r == 10 ? 0 : -1;
}

/* Receives message k from `s` and checks it and its three descriptors (see passfd_send). */
static int passfd_check(int s, unsigned n) {
    char msg[16], want[16], b[32];
    int fds[3] = {-1, -1, -1};
    char control[CMSG_SPACE(sizeof fds)];
    struct iovec iov = {msg, 10};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control,
                        .msg_controllen = sizeof control};
    ssize_t r;
    while ((r = recvmsg(s, &mh, MSG_CMSG_CLOEXEC)) < 0 && errno == EINTR) {
    }
    struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
    if (c && c->cmsg_type == SCM_RIGHTS && c->cmsg_len == CMSG_LEN(sizeof fds))
        memcpy(fds, CMSG_DATA(c), sizeof fds);
    snprintf(want, sizeof want, "msg %06u", n);
    int ok = r == 10 && memcmp(msg, want, 10) == 0 && fds[0] >= 0;
    int len = snprintf(want, sizeof want, "pipe %u", n);
    ok = ok && read(fds[0], b, sizeof b) == len && memcmp(b, want, (size_t)len) == 0;
    ok = ok && lseek(fds[1], 0, SEEK_CUR) == 5 && read(fds[1], b, 5) == 5 &&
         memcmp(b, "56789", 5) == 0;
    len = snprintf(want, sizeof want, "sock %u", n);
    ok = ok && read(fds[2], b, sizeof b) == len && memcmp(b, want, (size_t)len) == 0;
    for (int i = 0; i < 3; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    return ok;
}

/* Descriptors in flight (SCM_RIGHTS) across a crash: one message is always queued on a
 * socket pair with a pipe end, a file and a socket that nothing else holds. Each second the
 * next is sent, then the oldest received and its descriptors checked. */
static int passfd(void) {
    int f = open("/tmp/passfd.txt", O_RDWR | O_CREAT | O_TRUNC, 0644);
    int sv[2];
    if (f < 0 || write(f, "0123456789", 10) != 10 || socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) {
        printf("passfd pid=%d setup: %s\n", getpid(), strerror(errno));
        return 1;
    }
    close(f);
    int wp[2], peer[2];
    unsigned ok = 0, bad = 0;
    if (passfd_send(sv[0], 1, &wp[1], &peer[1]) != 0) {
        printf("passfd pid=%d send: %s\n", getpid(), strerror(errno));
        return 1;
    }
    for (unsigned n = 1;; n++) {
        struct timespec t = {1, 0};
        while (nanosleep(&t, &t) != 0 && errno == EINTR) {
        }
        wp[0] = wp[1];
        peer[0] = peer[1];
        if (passfd_send(sv[0], n + 1, &wp[1], &peer[1]) != 0)
            bad++;
        if (passfd_check(sv[1], n))
            ok++;
        else
            bad++;
        close(wp[0]);
        close(peer[0]);
        printf("passfd pid=%d n=%u ok=%u bad=%u\n", getpid(), n, ok, bad);
    }
}

/* Reads the inotify events of `fd` that arrive within a moment: sets bit 0 for a create and
 * bit 1 for a delete on `dir`, bit 2 for a modify on `file`; an event for any other wd but
 * `probe`'s IN_IGNORED counts in *stray. */
static int inotify_drain(int fd, int dir, int file, int probe, int *stray) {
    int got = 0;
    char buf[4096] __attribute__((aligned(8)));
    for (int tries = 0; tries < 20; tries++) {
        ssize_t r = read(fd, buf, sizeof buf);
        if (r <= 0) {
            if (got == 7)
                break;
            struct timespec t = {0, 20000000};
            nanosleep(&t, NULL);
            continue;
        }
        for (char *p = buf; p < buf + r;) {
            struct inotify_event *e = (struct inotify_event *)p;
            if (e->wd == dir && (e->mask & IN_CREATE))
                got |= 1;
            else if (e->wd == dir && (e->mask & IN_DELETE))
                got |= 2;
            else if (e->wd == file && (e->mask & IN_MODIFY))
                got |= 4;
            else if (!(e->wd == probe && (e->mask & IN_IGNORED)))
                (*stray)++;
            p += sizeof *e + e->len;
        }
    }
    return got;
}

/* inotify watches across a crash: watches at wds 1 and 3 (2 removed), events for both
 * every second, and a probe watch added and removed each time, whose wd goes up by one
 * each time (the kernel hands them out in turn), so it is n + 3 in round n. */
static int inotify_mode(void) {
    mkdir("/tmp/inodir", 0755);
    int f = open("/tmp/inodir/f1", O_RDWR | O_CREAT | O_TRUNC, 0644);
    int g = open("/tmp/inofile", O_RDWR | O_CREAT | O_TRUNC, 0644);
    int fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    int dir = inotify_add_watch(fd, "/tmp/inodir", IN_CREATE | IN_DELETE);
    int gap = inotify_add_watch(fd, "/tmp/inofile", IN_MODIFY);
    int file = inotify_add_watch(fd, "/tmp/inodir/f1", IN_MODIFY | IN_ATTRIB);
    if (f < 0 || g < 0 || fd < 0 || dir != 1 || gap != 2 || file != 3 ||
        inotify_rm_watch(fd, gap) != 0) {
        printf("inotify pid=%d setup: %s\n", getpid(), strerror(errno));
        return 1;
    }
    unsigned bad = 0;
    int stray = 0;
    inotify_drain(fd, dir, file, gap, &stray);
    for (int n = 1;; n++) {
        struct timespec t = {1, 0};
        while (nanosleep(&t, &t) != 0 && errno == EINTR) {
        }
        char name[64];
        snprintf(name, sizeof name, "/tmp/inodir/t%d", n);
        int c = open(name, O_RDWR | O_CREAT, 0644);
        close(c);
        unlink(name);
        write_all(f, "x", 1);
        int probe = inotify_add_watch(fd, "/tmp/inofile", IN_MODIFY);
        inotify_rm_watch(fd, probe);
        int got = inotify_drain(fd, dir, file, probe, &stray);
        if (got != 7 || probe != n + 3)
            bad++;
        printf("inotify pid=%d n=%d wds=%d,%d probe=%d events=%d stray=%d bad=%u\n", getpid(), n,
               dir, file, probe, got, stray, bad);
    }
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc == 3 && strcmp(argv[1], "heap") == 0)
        return heap(atol(argv[2]));
    if (argc == 3 && strcmp(argv[1], "threads") == 0)
        return threads(argv[2]);
    if (argc == 7 && strcmp(argv[1], "corrupt") == 0)
        return corrupt(argv);
    if (argc == 2 && strcmp(argv[1], "sleeper") == 0)
        return sleeper();
    if (argc == 2 && strcmp(argv[1], "events") == 0)
        return events();
    if (argc == 2 && strcmp(argv[1], "unixpair") == 0)
        return unixpair();
    if (argc == 2 && strcmp(argv[1], "family") == 0)
        return family();
    if (argc == 2 && strcmp(argv[1], "pending") == 0)
        return pending();
    if (argc == 2 && strcmp(argv[1], "bigwrite") == 0)
        return bigwrite();
    if (argc == 2 && strcmp(argv[1], "creds") == 0)
        return creds();
    if (argc == 2 && strcmp(argv[1], "timers") == 0)
        return timers();
    if (argc == 2 && strcmp(argv[1], "memfd") == 0)
        return memfd();
    if (argc == 2 && strcmp(argv[1], "passfd") == 0)
        return passfd();
    if (argc == 2 && strcmp(argv[1], "inotify") == 0)
        return inotify_mode();
    fprintf(stderr,
            "usage: owtest heap MIB | threads FILE | sleeper | events | unixpair | family | "
            "pending | bigwrite | creds | timers | memfd | passfd | inotify\n");
    return 2;
}

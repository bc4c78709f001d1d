/*
 * selftest.c - checks owvmm.h without a VM: it plays the agent's part on itself, writing
 * the crash block into a page of its own and queueing signal 63 to its own thread.
 *
 *   selftest continue           OW_CONTINUE, the counter, signals that must be ignored
 *   selftest restart DIR ARGS   OW_RESTART: same PID, argv, environment and cwd, fds >= 3
 *                               closed, no signal blocked (state kept in DIR between images)
 *   selftest toobig             OW_RESTART with an environment over the SDK's 1 MiB cap:
 *                               the program goes on
 *
 * Prints "selftest: MODE ok" and exits 0, or says what failed and exits 1.
 * Built by sdk/rust/tests/c_header.rs with gcc -std=c99 -Wall -Wextra -Werror [-static].
 */
#include "owvmm.h"

#include <stdio.h>
#include <stdlib.h>

#define KEPT_FD 100

static int failures;

#define CHECK(cond)                                                                   \
    do {                                                                              \
        if (!(cond)) {                                                                \
            fprintf(stderr, "selftest: FAIL line %d: %s\n", __LINE__, #cond);         \
            failures++;                                                               \
        }                                                                             \
    } while (0)

/* ---- the agent's part ---- */

struct lost_spec {
    int fd;
    const char *kind, *why;
};

/* A block as the agent writes it, in a fresh mapping of len bytes. */
static void *make_block(size_t len, const struct lost_spec *lost, unsigned n) {
    unsigned char *a = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    struct ow_lost *arr;
    char *str;
    uint32_t version = 1;
    uint64_t u;
    unsigned i;
    if (a == MAP_FAILED) {
        perror("selftest: mmap");
        exit(1);
    }
    memcpy(a, "OWCRASH1", 8);
    memcpy(a + 8, &version, 4);
    memcpy(a + 12, &n, 4);
    u = (uint64_t)(uintptr_t)(a + 32);
    memcpy(a + 16, &u, 8);
    u = len;
    memcpy(a + 24, &u, 8);
    arr = (struct ow_lost *)(a + 32);
    str = (char *)(arr + n);
    for (i = 0; i < n; i++) {
        arr[i].fd = lost[i].fd;
        arr[i].kind = strcpy(str, lost[i].kind);
        str += strlen(str) + 1;
        arr[i].why = strcpy(str, lost[i].why);
        str += strlen(str) + 1;
    }
    return a;
}

/* Queues signal 63 to this thread as the agent does to the main thread. */
static void send_signal(int code, void *ptr) {
    siginfo_t si;
    memset(&si, 0, sizeof si);
    si.si_signo = OW_SIGNAL;
    si.si_code = code;
    si.si_pid = getpid();
    si.si_uid = getuid();
    si.si_value.sival_ptr = ptr;
    if (syscall(SYS_rt_tgsigqueueinfo, getpid(), syscall(SYS_gettid), OW_SIGNAL, &si) != 0) {
        perror("selftest: rt_tgsigqueueinfo");
        exit(1);
    }
}

static int mapped(void *p) {
    unsigned char v;
    return mincore(p, 4096, &v) == 0;
}

/* ---- the program's part ---- */

static unsigned calls, seen_crashes, seen_n_lost, seen_ok;
static void *seen_arg;

static const struct lost_spec two_lost[] = {
    {5, "tcp", "established connection reset"},
    {-1, "device", "cannot restore /dev/foo"},
};

static ow_decision on_crash(const struct ow_crash_info *info, void *arg) {
    unsigned i;
    calls++;
    seen_crashes = info->crashes;
    seen_n_lost = info->n_lost;
    seen_arg = arg;
    seen_ok = 1;
    for (i = 0; i < info->n_lost && i < 2; i++)
        seen_ok &= info->lost[i].fd == two_lost[i].fd && strcmp(info->lost[i].kind, two_lost[i].kind) == 0 &&
                   strcmp(info->lost[i].why, two_lost[i].why) == 0;
    return OW_CONTINUE;
}

static ow_decision restart_now(const struct ow_crash_info *info, void *arg) {
    (void)arg;
    calls++;
    seen_crashes = info->crashes;
    return OW_RESTART;
}

static void handler_is(int want_sdk) {
    struct sigaction sa;
    CHECK(sigaction(OW_SIGNAL, NULL, &sa) == 0);
    if (want_sdk) {
        CHECK((sa.sa_flags & (SA_SIGINFO | SA_RESTART)) == (SA_SIGINFO | SA_RESTART));
        CHECK(sa.sa_sigaction != NULL && sa.sa_handler != SIG_DFL && sa.sa_handler != SIG_IGN);
    } else {
        CHECK(!(sa.sa_flags & SA_SIGINFO) && sa.sa_handler == SIG_DFL);
    }
}

static void ignored(int code, void *ptr, const char *what) {
    unsigned before = calls;
    send_signal(code, ptr);
    if (calls != before)
        fprintf(stderr, "selftest: FAIL: procedure called for %s\n", what);
    failures += calls != before;
}

static int run_continue(void) {
    int a1 = 1, a2 = 2;
    unsigned char *b;
    uint32_t bad_version = 2, huge = 1000;
    void *gone;

    handler_is(0);
    CHECK(ow_set_crash_procedure(on_crash, &a1) == 0);
    handler_is(1);

    b = make_block(4096, two_lost, 2);
    send_signal(SI_QUEUE, b);
    CHECK(calls == 1 && seen_crashes == 1 && seen_n_lost == 2 && seen_ok && seen_arg == &a1);
    CHECK(!mapped(b)); /* the SDK unmapped the block */

    /* Not the agent's: ignored, the block left alone. */
    b = make_block(4096, two_lost, 2);
    ignored(SI_USER, b, "SI_USER");
    ignored(SI_QUEUE, NULL, "a NULL pointer");
    ignored(SI_QUEUE, (void *)5, "sival_int 5");
    ignored(SI_QUEUE, b + 8, "an unaligned pointer");
    gone = make_block(4096, two_lost, 0);
    munmap(gone, 4096);
    ignored(SI_QUEUE, gone, "an unmapped page");
    b[0] = 'X';
    ignored(SI_QUEUE, b, "a bad magic");
    b[0] = 'O';
    memcpy(b + 8, &bad_version, 4);
    ignored(SI_QUEUE, b, "version 2");
    CHECK(mapped(b));
    munmap(b, 4096);
    b = make_block(4096, two_lost, 2);
    memcpy(b + 12, &huge, 4);
    ignored(SI_QUEUE, b, "n_lost past the block");
    munmap(b, 4096);

    send_signal(SI_QUEUE, make_block(8192, two_lost, 2));
    CHECK(calls == 2 && seen_crashes == 2 && seen_n_lost == 2 && seen_ok);
    send_signal(SI_QUEUE, make_block(4096, two_lost, 0));
    CHECK(calls == 3 && seen_crashes == 3 && seen_n_lost == 0);

    /* Replaced: the new argument; removed: SIG_DFL. */
    CHECK(ow_set_crash_procedure(on_crash, &a2) == 0);
    send_signal(SI_QUEUE, make_block(4096, two_lost, 1));
    CHECK(calls == 4 && seen_crashes == 4 && seen_n_lost == 1 && seen_arg == &a2);
    CHECK(ow_set_crash_procedure(NULL, NULL) == 0);
    handler_is(0);
    return failures;
}

static int run_restart(int argc, char **argv) {
    char path[4096], cwd[4096], was_cwd[4096];
    long was_pid;
    sigset_t set;
    FILE *f;
    int fd;

    snprintf(path, sizeof path, "%s/state", argv[2]);
    CHECK(getcwd(cwd, sizeof cwd) != NULL);
    f = fopen(path, "r");
    if (f == NULL) {
        /* The first image: remember, keep an fd open, block a signal, crash. */
        f = fopen(path, "w");
        CHECK(f != NULL);
        if (f == NULL)
            return 1;
        fprintf(f, "%ld %s\n", (long)getpid(), cwd);
        fclose(f);
        fd = open(path, O_RDONLY);
        CHECK(fd >= 0 && dup2(fd, KEPT_FD) == KEPT_FD);
        sigemptyset(&set);
        sigaddset(&set, SIGUSR1);
        sigprocmask(SIG_BLOCK, &set, NULL);
        CHECK(ow_set_crash_procedure(restart_now, NULL) == 0);
        printf("selftest: first image, pid %ld\n", (long)getpid());
        fflush(stdout);
        send_signal(SI_QUEUE, make_block(4096, two_lost, 2));
        fprintf(stderr, "selftest: FAIL: still in the first image after OW_RESTART\n");
        return 1;
    }
    /* The restarted image. */
    CHECK(fscanf(f, "%ld %4095s", &was_pid, was_cwd) == 2);
    fclose(f);
    CHECK(was_pid == (long)getpid());
    CHECK(strcmp(was_cwd, cwd) == 0);
    CHECK(fcntl(KEPT_FD, F_GETFD) == -1 && errno == EBADF);
    CHECK(sigprocmask(SIG_BLOCK, NULL, &set) == 0);
    CHECK(!sigismember(&set, SIGUSR1) && !sigismember(&set, OW_SIGNAL));
    CHECK(argc == 4 && strcmp(argv[3], "two words") == 0);
    CHECK(getenv("OW_SELFTEST") != NULL && strcmp(getenv("OW_SELFTEST"), "1") == 0);
    handler_is(0);
    if (failures == 0)
        printf("selftest: restarted, pid %ld\n", (long)getpid());
    return failures;
}

static int run_toobig(void) {
    int fd = open("/proc/self/cmdline", O_RDONLY);
    CHECK(fd >= 0 && dup2(fd, KEPT_FD) == KEPT_FD);
    CHECK(ow_set_crash_procedure(restart_now, NULL) == 0);
    send_signal(SI_QUEUE, make_block(4096, two_lost, 0));
    CHECK(calls == 1 && seen_crashes == 1);
    CHECK(fcntl(KEPT_FD, F_GETFD) != -1); /* nothing closed: it went on */
    return failures;
}

int main(int argc, char **argv) {
    int r;
    setvbuf(stdout, NULL, _IONBF, 0);
    if (argc == 2 && strcmp(argv[1], "continue") == 0)
        r = run_continue();
    else if (argc >= 3 && strcmp(argv[1], "restart") == 0)
        r = run_restart(argc, argv);
    else if (argc == 2 && strcmp(argv[1], "toobig") == 0)
        r = run_toobig();
    else {
        fprintf(stderr, "usage: selftest continue | restart DIR ARG | toobig\n");
        return 2;
    }
    if (r == 0)
        printf("selftest: %s ok\n", argv[1]);
    return r == 0 ? 0 : 1;
}

/*
 * Test program for tests/resurrect.rs: a process worth resurrecting.
 *
 * usage: resurrect_target DATA_FILE REPORT_FILE
 *
 * - 1 MiB of heap blocks filled with pseudo-random bytes and their checksum;
 * - a SIGUSR1 handler that counts;
 * - a second thread ("worker") that counts;
 * - DATA_FILE (fd 3, opened O_RDWR without O_APPEND) gets "line N" per tick at its
 *   current position;
 * - stdout gets "tick <getpid> <counter> <checksum-ok> <worker-counter> <usr1-count>".
 *
 * Once set up, it writes REPORT_FILE with what /proc does not show: the brk, each
 * thread's clear_child_tid address and the raw SIGUSR1 action.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define NBLOCKS 256
#define BLOCK 4096

static unsigned char *blocks[NBLOCKS];
static uint64_t sum0;
static volatile unsigned long counter, counter2, usr1;
static volatile unsigned long worker_tid_addr;
static volatile int worker_tid;

struct ksigaction {
	unsigned long handler, flags, restorer, mask;
};

static uint64_t checksum(void)
{
	uint64_t h = 1469598103934665603ull;
	for (int i = 0; i < NBLOCKS; i++)
		for (int j = 0; j < BLOCK; j++)
			h = (h ^ blocks[i][j]) * 1099511628211ull;
	return h;
}

static void on_usr1(int sig)
{
	(void)sig;
	usr1++;
}

static void nap(long ms)
{
	struct timespec ts = { 0, ms * 1000000L };
	nanosleep(&ts, NULL); /* EINTR just shortens the nap */
}

static unsigned long tid_address(void)
{
	unsigned long a = 0;
	syscall(SYS_prctl, PR_GET_TID_ADDRESS, &a, 0, 0, 0);
	return a;
}

static void *worker(void *arg)
{
	(void)arg;
	prctl(PR_SET_NAME, "worker", 0, 0, 0);
	worker_tid_addr = tid_address();
	worker_tid = (int)syscall(SYS_gettid);
	for (;;) {
		counter2++;
		nap(5);
	}
	return NULL;
}

int main(int argc, char **argv)
{
	if (argc != 3)
		return 2;
	uint64_t seed = 88172645463325252ull;
	for (int i = 0; i < NBLOCKS; i++) {
		blocks[i] = malloc(BLOCK);
		for (int j = 0; j < BLOCK; j++) {
			seed ^= seed << 13;
			seed ^= seed >> 7;
			seed ^= seed << 17;
			blocks[i][j] = (unsigned char)seed;
		}
	}
	sum0 = checksum();

	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_usr1;
	sa.sa_flags = SA_RESTART;
	sigemptyset(&sa.sa_mask);
	sigaddset(&sa.sa_mask, SIGUSR2);
	sigaction(SIGUSR1, &sa, NULL);

	int fd = open(argv[1], O_RDWR | O_CREAT | O_TRUNC, 0644);
	if (fd != 3)
		return 3;

	pthread_t t;
	pthread_create(&t, NULL, worker, NULL);
	while (!worker_tid)
		nap(1);

	struct ksigaction k;
	syscall(SYS_rt_sigaction, SIGUSR1, NULL, &k, 8);
	char tmp[4096];
	snprintf(tmp, sizeof tmp, "%s.tmp", argv[2]);
	int rfd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	char rep[1024];
	int n = snprintf(rep, sizeof rep,
			 "brk %lx\ntid %d %lx\ntid %d %lx\nsig %d %lx %lx %lx %lx\n",
			 (unsigned long)sbrk(0), (int)syscall(SYS_gettid), tid_address(),
			 worker_tid, worker_tid_addr, SIGUSR1, k.handler, k.flags, k.restorer,
			 k.mask);
	write(rfd, rep, n);
	close(rfd);
	rename(tmp, argv[2]);

	for (;;) {
		char line[256];
		counter++;
		int ok = checksum() == sum0;
		n = snprintf(line, sizeof line, "tick %d %lu %d %lu %lu\n", (int)syscall(SYS_getpid),
			     counter, ok, counter2, usr1);
		write(1, line, n);
		n = snprintf(line, sizeof line, "line %lu\n", counter);
		write(fd, line, n);
		nap(20);
	}
}

/* The ends of the recovery benchmark's shell pipeline (owvmm-bench --recovery, workload
 * "pipeline"), built with cc -O2 -static:
 *
 *   pipe produce MS     writes "n=1", "n=2", ... one line every MS milliseconds
 *   pipe consume EVERY  reads "n=N" lines, checks that each is the one before plus 1,
 *                       and prints "pipe pid=P n=N ok=1|0 lines=L" for N = 1, 1+EVERY, ...
 *
 * Raw read/write with the interrupted calls retried, so that a call cut off by a guest
 * kernel crash (EINTR) goes on where it was. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int write_all(int fd, const char *p, size_t n) {
	while (n > 0) {
		ssize_t w = write(fd, p, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

static int produce(long ms) {
	char line[64];
	for (unsigned long n = 1;; n++) {
		int len = snprintf(line, sizeof line, "n=%lu\n", n);
		if (write_all(1, line, (size_t)len) < 0)
			return 1;
		struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
		while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
			;
	}
}

static int consume(unsigned long every) {
	char buf[4096], line[128], out[128];
	size_t have = 0;
	unsigned long last = 0, lines = 0;
	int ok = 1;
	for (;;) {
		ssize_t r = read(0, buf, sizeof buf);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return r < 0;
		for (ssize_t i = 0; i < r; i++) {
			if (buf[i] != '\n') {
				if (have < sizeof line - 1)
					line[have++] = buf[i];
				continue;
			}
			line[have] = 0;
			have = 0;
			unsigned long n;
			if (sscanf(line, "n=%lu", &n) != 1) {
				ok = 0;
				continue;
			}
			if (lines > 0 && n != last + 1)
				ok = 0;
			last = n;
			lines++;
			if ((n - 1) % every == 0) {
				int len = snprintf(out, sizeof out, "pipe pid=%d n=%lu ok=%d lines=%lu\n",
						   (int)getpid(), n, ok, lines);
				if (write_all(1, out, (size_t)len) < 0)
					return 1;
			}
		}
	}
}

int main(int argc, char **argv) {
	if (argc == 3 && strcmp(argv[1], "produce") == 0 && atol(argv[2]) > 0)
		return produce(atol(argv[2]));
	if (argc == 3 && strcmp(argv[1], "consume") == 0 && strtoul(argv[2], 0, 10) > 0)
		return consume(strtoul(argv[2], 0, 10));
	fprintf(stderr, "usage: pipe produce MS | pipe consume EVERY\n");
	return 2;
}

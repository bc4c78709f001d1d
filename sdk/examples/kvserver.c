/*
 * kvserver.c - an in-memory key-value server with a crash procedure (owvmm.h example).
 *
 * Build:  gcc -O2 -static -I DIR/include kvserver.c -o kvserver    (owvmm sdk DIR)
 * Run:    kvserver [--port N] [--bind ADDR] [--state FILE] [--on-crash continue|restart]
 *         defaults: 7070, 0.0.0.0, /var/lib/kvserver/state, restart. --port 0 takes a
 *         free port (the "listening on port P" line says which).
 *
 * Protocol, one command a line (at most 4096 bytes with its newline; a longer line gets
 * "ERR line too long" and the connection is closed):
 *   SET key value   -> OK         (key: no spaces; value: the rest of the line)
 *   GET key         -> VALUE value, or NONE
 *   COUNT           -> COUNT n
 *   QUIT            closes the connection
 *
 * After a guest kernel crash, its crash procedure prints what was lost, then:
 *   --on-crash continue  drops the lost connections (and listens again if the listening
 *                        socket was lost) and goes on with the table as it is;
 *   --on-crash restart   saves the table to FILE and restarts afresh; the new image loads
 *                        it (if FILE cannot be written it goes on instead).
 * Signal 63 is blocked except while the server waits in ppoll(), so the procedure never
 * sees a table half-updated and never interrupts malloc or stdio.
 *
 * State file: a first line "# kvserver state 1", then one line per key, "KEY VALUE", both
 * %-escaped: '%', space and bytes below 0x20 or 0x7f as %XX (hex). Written atomically
 * (FILE.tmp, fsync, rename), its directory made if missing.
 */
#include "owvmm.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>

#define MAX_LINE 4096
#define MAX_CLIENTS 64
#define MAX_KEYS 65536
#define MAX_LOST 64

struct entry {
    char *key, *val;
};

struct client {
    int fd;
    size_t len;
    char buf[MAX_LINE + 1];
};

static struct entry *table;
static size_t n_keys, cap_keys;
static struct client clients[MAX_CLIENTS];
static int n_clients;
static int listen_fd = -1;
static const char *state_path = "/var/lib/kvserver/state";
static const char *bind_addr = "0.0.0.0";
static int port = 7070;
static int restart_on_crash = 1;
/* Descriptors the last crash took, for the main loop to drop (--on-crash continue). */
static int lost_fds[MAX_LOST];
static volatile sig_atomic_t n_lost_fds;

/* ---- the table ---- */

static struct entry *find(const char *key) {
    size_t i;
    for (i = 0; i < n_keys; i++)
        if (strcmp(table[i].key, key) == 0)
            return &table[i];
    return NULL;
}

/* 0, or -1 when the table is full or memory is out. */
static int set(const char *key, const char *val) {
    struct entry *e = find(key);
    char *v = strdup(val);
    if (v == NULL)
        return -1;
    if (e != NULL) {
        free(e->val);
        e->val = v;
        return 0;
    }
    if (n_keys == cap_keys) {
        size_t cap = cap_keys ? cap_keys * 2 : 64;
        struct entry *t;
        if (cap > MAX_KEYS)
            cap = MAX_KEYS;
        if (n_keys == cap || (t = realloc(table, cap * sizeof *t)) == NULL) {
            free(v);
            return -1;
        }
        table = t;
        cap_keys = cap;
    }
    if ((table[n_keys].key = strdup(key)) == NULL) {
        free(v);
        return -1;
    }
    table[n_keys++].val = v;
    return 0;
}

/* ---- the state file ---- */

static int unhex(int c) {
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Undoes the %-escaping in place; -1 on a bad escape. */
static int unescape(char *s) {
    char *out = s;
    for (; *s; s++) {
        if (*s == '%') {
            int hi = unhex((unsigned char)s[1]), lo = hi < 0 ? -1 : unhex((unsigned char)s[2]);
            if (lo < 0)
                return -1;
            *out++ = (char)(hi * 16 + lo);
            s += 2;
        } else {
            *out++ = *s;
        }
    }
    *out = '\0';
    return 0;
}

static void load(void) {
    FILE *f = fopen(state_path, "r");
    char *line = NULL, *sp;
    size_t cap = 0, lineno = 0;
    ssize_t len;
    if (f == NULL) {
        if (errno != ENOENT)
            fprintf(stderr, "kvserver: cannot read %s: %s\n", state_path, strerror(errno));
        return;
    }
    while ((len = getline(&line, &cap, f)) > 0) {
        lineno++;
        if (line[len - 1] == '\n')
            line[--len] = '\0';
        if (line[0] == '#' || len == 0)
            continue;
        sp = strchr(line, ' ');
        if (sp == NULL || sp == line || (*sp = '\0', unescape(line)) != 0 || unescape(sp + 1) != 0) {
            fprintf(stderr, "kvserver: %s:%zu: not KEY VALUE, skipped\n", state_path, lineno);
            continue;
        }
        if (set(line, sp + 1) != 0) {
            fprintf(stderr, "kvserver: %s: table full, the rest skipped\n", state_path);
            break;
        }
    }
    free(line);
    fclose(f);
    printf("kvserver: loaded %zu keys from %s\n", n_keys, state_path);
}

/* Output with write(2) alone, for the crash procedure (a signal handler). */
struct out {
    int fd, failed;
    size_t len;
    char buf[65536];
};

static struct out save_out, msg_out;

static void out_flush(struct out *o) {
    size_t done = 0;
    while (done < o->len && !o->failed) {
        ssize_t r = write(o->fd, o->buf + done, o->len - done);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            o->failed = 1;
        else
            done += (size_t)r;
    }
    o->len = 0;
}

static void out_char(struct out *o, char c) {
    if (o->len == sizeof o->buf)
        out_flush(o);
    o->buf[o->len++] = c;
}

static void out_str(struct out *o, const char *s) {
    while (*s)
        out_char(o, *s++);
}

static void out_uint(struct out *o, unsigned long n) {
    char digits[24];
    int i = 0;
    do
        digits[i++] = (char)('0' + n % 10);
    while ((n /= 10) != 0);
    while (i > 0)
        out_char(o, digits[--i]);
}

static void out_escaped(struct out *o, const char *s) {
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '%' || c == ' ' || c < 0x20 || c == 0x7f) {
            out_char(o, '%');
            out_char(o, "0123456789ABCDEF"[c >> 4]);
            out_char(o, "0123456789ABCDEF"[c & 15]);
        } else {
            out_char(o, (char)c);
        }
    }
}

/* Appends to a fixed path buffer; -1 when it does not fit. */
static int path_cat(char *dst, size_t cap, const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b);
    if (la + lb + 1 > cap)
        return -1;
    memcpy(dst, a, la);
    memcpy(dst + la, b, lb + 1);
    return 0;
}

/* Writes the table to state_path atomically; 0, or -1 and errno. Async-signal-safe. */
static int save(void) {
    static char tmp[4096], dir[4096];
    char *slash;
    size_t i;
    int fd, e;
    if (path_cat(tmp, sizeof tmp, state_path, ".tmp") != 0 || path_cat(dir, sizeof dir, state_path, "") != 0) {
        errno = ENAMETOOLONG;
        return -1;
    }
    /* mkdir -p of the directory. */
    for (slash = strchr(dir + 1, '/'); slash != NULL; slash = strchr(slash + 1, '/')) {
        *slash = '\0';
        if (mkdir(dir, 0755) != 0 && errno != EEXIST)
            return -1;
        *slash = '/';
    }
    if ((fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644)) < 0)
        return -1;
    save_out.fd = fd;
    save_out.failed = 0;
    save_out.len = 0;
    out_str(&save_out, "# kvserver state 1\n");
    for (i = 0; i < n_keys; i++) {
        out_escaped(&save_out, table[i].key);
        out_char(&save_out, ' ');
        out_escaped(&save_out, table[i].val);
        out_char(&save_out, '\n');
    }
    out_flush(&save_out);
    e = errno;
    if (save_out.failed || fsync(fd) != 0) {
        e = save_out.failed ? e : errno;
        close(fd);
        unlink(tmp);
        errno = e;
        return -1;
    }
    close(fd);
    if (rename(tmp, state_path) != 0)
        return -1;
    /* The rename itself made durable. */
    slash = strrchr(dir, '/');
    if (slash != NULL) {
        *(slash == dir ? slash + 1 : slash) = '\0';
        if ((fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) >= 0) {
            fsync(fd);
            close(fd);
        }
    }
    return 0;
}

/* ---- the crash procedure ---- */

static ow_decision on_crash(const struct ow_crash_info *info, void *arg) {
    unsigned i;
    (void)arg;
    msg_out.fd = 2;
    msg_out.len = 0;
    msg_out.failed = 0;
    out_str(&msg_out, "kvserver: crash procedure: crash ");
    out_uint(&msg_out, info->crashes);
    out_str(&msg_out, ", ");
    out_uint(&msg_out, info->n_lost);
    out_str(&msg_out, " lost");
    for (i = 0; i < info->n_lost; i++) {
        out_str(&msg_out, i == 0 ? ": " : "; ");
        out_str(&msg_out, info->lost[i].kind);
        out_char(&msg_out, ' ');
        if (info->lost[i].fd < 0)
            out_char(&msg_out, '-');
        else
            out_uint(&msg_out, (unsigned long)info->lost[i].fd);
        out_char(&msg_out, ' ');
        out_str(&msg_out, info->lost[i].why);
        if (info->lost[i].fd >= 0 && n_lost_fds < MAX_LOST)
            lost_fds[n_lost_fds++] = info->lost[i].fd;
    }
    out_char(&msg_out, '\n');
    if (restart_on_crash) {
        if (save() == 0) {
            out_str(&msg_out, "kvserver: saved ");
            out_uint(&msg_out, n_keys);
            out_str(&msg_out, " keys to ");
            out_str(&msg_out, state_path);
            out_str(&msg_out, ", restarting\n");
            out_flush(&msg_out);
            return OW_RESTART;
        }
        out_str(&msg_out, "kvserver: cannot save to ");
        out_str(&msg_out, state_path);
        out_str(&msg_out, " (errno ");
        out_uint(&msg_out, (unsigned long)errno);
        out_str(&msg_out, "), going on instead\n");
    }
    out_flush(&msg_out);
    return OW_CONTINUE;
}

/* ---- the server ---- */

static int open_listener(void) {
    struct sockaddr_in sa;
    socklen_t sl = sizeof sa;
    int one = 1, fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, bind_addr, &sa.sin_addr) != 1) {
        fprintf(stderr, "kvserver: --bind %s: not an IPv4 address\n", bind_addr);
        exit(2);
    }
    /* After a restart the old connections to the port may still be closing: retry a
     * while, as servers do (nginx tries five times). */
    int tries = 0, ok = 0;
    if (fd >= 0 && setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) == 0) {
        while (!(ok = bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0) && errno == EADDRINUSE &&
               ++tries < 50) {
            struct timespec ts = {0, 200 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
    }
    if (!ok || listen(fd, 16) != 0 || getsockname(fd, (struct sockaddr *)&sa, &sl) != 0) {
        fprintf(stderr, "kvserver: cannot listen on %s:%d: %s\n", bind_addr, port, strerror(errno));
        exit(1);
    }
    port = ntohs(sa.sin_port);
    printf("kvserver: listening on port %d (pid %ld)\n", port, (long)getpid());
    fflush(stdout);
    return fd;
}

static void drop(int i) {
    close(clients[i].fd);
    clients[i] = clients[--n_clients];
}

/* Answers one line; 0 to go on with the client, -1 to close it. */
static int command(struct client *c, char *line) {
    char reply[MAX_LINE + 16], *key, *val;
    size_t len = strlen(line);
    if (len > 0 && line[len - 1] == '\r')
        line[--len] = '\0';
    if (len == 0)
        return 0;
    key = strchr(line, ' ');
    if (key != NULL)
        *key++ = '\0';
    if (strcmp(line, "SET") == 0 && key != NULL && (val = strchr(key, ' ')) != NULL && val != key) {
        *val++ = '\0';
        snprintf(reply, sizeof reply, "%s\n", set(key, val) == 0 ? "OK" : "ERR table full");
    } else if (strcmp(line, "GET") == 0 && key != NULL && *key && strchr(key, ' ') == NULL) {
        struct entry *e = find(key);
        if (e != NULL)
            snprintf(reply, sizeof reply, "VALUE %s\n", e->val);
        else
            snprintf(reply, sizeof reply, "NONE\n");
    } else if (strcmp(line, "COUNT") == 0 && key == NULL) {
        snprintf(reply, sizeof reply, "COUNT %zu\n", n_keys);
    } else if (strcmp(line, "QUIT") == 0 && key == NULL) {
        return -1;
    } else {
        snprintf(reply, sizeof reply, "ERR usage: SET key value | GET key | COUNT | QUIT\n");
    }
    /* A client that does not read its answers is dropped, not waited for. */
    len = strlen(reply);
    return write(c->fd, reply, len) == (ssize_t)len ? 0 : -1;
}

/* Reads what client i sent and answers its whole lines; -1 to close it. */
static int serve(int i) {
    struct client *c = &clients[i];
    char *nl, *start;
    ssize_t r = read(c->fd, c->buf + c->len, MAX_LINE - c->len);
    if (r < 0 && (errno == EAGAIN || errno == EINTR))
        return 0;
    if (r <= 0)
        return -1;
    c->len += (size_t)r;
    c->buf[c->len] = '\0';
    start = c->buf;
    while ((nl = memchr(start, '\n', c->len - (size_t)(start - c->buf))) != NULL) {
        *nl = '\0';
        if (strlen(start) != (size_t)(nl - start) || command(c, start) != 0)
            return -1; /* a NUL inside the line, QUIT, or a reader that is not reading */
        start = nl + 1;
    }
    c->len -= (size_t)(start - c->buf);
    memmove(c->buf, start, c->len);
    if (c->len == MAX_LINE) {
        static const char too_long[] = "ERR line too long\n";
        if (write(c->fd, too_long, sizeof too_long - 1) < 0) {
            /* closed below anyway */
        }
        return -1;
    }
    return 0;
}

/* --on-crash continue: the descriptors the crash took are closed and forgotten. */
static void drop_lost(void) {
    int i, j, n = n_lost_fds;
    for (j = 0; j < n; j++) {
        for (i = 0; i < n_clients; i++)
            if (clients[i].fd == lost_fds[j])
                drop(i--);
        if (lost_fds[j] == listen_fd) {
            close(listen_fd);
            listen_fd = open_listener();
        }
    }
    n_lost_fds = 0;
}

static void usage(void) {
    fprintf(stderr, "usage: kvserver [--port N] [--bind ADDR] [--state FILE] [--on-crash continue|restart]\n");
    exit(2);
}

int main(int argc, char **argv) {
    struct pollfd pfd[MAX_CLIENTS + 1];
    sigset_t only63, waiting;
    int i;
    setvbuf(stdout, NULL, _IONBF, 0);
    setvbuf(stderr, NULL, _IONBF, 0);
    for (i = 1; i < argc; i++) {
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        char *end;
        if (strcmp(argv[i], "--port") == 0 && v != NULL) {
            long p = strtol(v, &end, 10);
            if (*v == '\0' || *end != '\0' || p < 0 || p > 65535)
                usage();
            port = (int)p;
        } else if (strcmp(argv[i], "--bind") == 0 && v != NULL) {
            bind_addr = v;
        } else if (strcmp(argv[i], "--state") == 0 && v != NULL && *v != '\0') {
            state_path = v;
        } else if (strcmp(argv[i], "--on-crash") == 0 && v != NULL &&
                   (strcmp(v, "continue") == 0 || strcmp(v, "restart") == 0)) {
            restart_on_crash = strcmp(v, "restart") == 0;
        } else {
            usage();
        }
        i++;
    }
    /* Signal 63 only while waiting in ppoll (below). */
    sigemptyset(&only63);
    sigaddset(&only63, OW_SIGNAL);
    sigprocmask(SIG_BLOCK, &only63, &waiting);
    sigdelset(&waiting, OW_SIGNAL);
    if (ow_set_crash_procedure(on_crash, NULL) != 0) {
        fprintf(stderr, "kvserver: cannot set the crash procedure: %s\n", strerror(errno));
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    load();
    listen_fd = open_listener();
    for (;;) {
        pfd[0].fd = listen_fd;
        pfd[0].events = POLLIN;
        for (i = 0; i < n_clients; i++) {
            pfd[i + 1].fd = clients[i].fd;
            pfd[i + 1].events = POLLIN;
        }
        if (ppoll(pfd, (nfds_t)n_clients + 1, NULL, &waiting) < 0) {
            if (errno != EINTR) {
                perror("kvserver: ppoll");
                return 1;
            }
            drop_lost();
            continue;
        }
        for (i = n_clients; i > 0; i--)
            if ((pfd[i].revents & (POLLIN | POLLHUP | POLLERR)) && serve(i - 1) != 0)
                drop(i - 1);
        if (pfd[0].revents & POLLIN) {
            int fd = accept4(listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
            if (fd >= 0 && n_clients == MAX_CLIENTS) {
                static const char busy[] = "ERR too many clients\n";
                if (write(fd, busy, sizeof busy - 1) < 0) {
                    /* closed anyway */
                }
                close(fd);
            } else if (fd >= 0) {
                clients[n_clients].fd = fd;
                clients[n_clients++].len = 0;
            }
        }
    }
}

/*
 * The floor: a TCP relay that does the least user-space work any proxy can do
 * per request. bench/load.sh measures it as the variant `relay` to show what
 * the kernel alone costs per request on this machine (loopback TCP, the
 * wake-ups, epoll), below which no HTTP proxy's CPU per request can go.
 *
 * No HTTP at all: each client connection gets its own backend connection
 * (round-robin over the backends, connected at accept), and bytes go through
 * unread, each direction through one 16 KiB buffer. One thread, level-triggered
 * epoll, non-blocking sockets, TCP_NODELAY both ways: per request, the same
 * system calls as limpet and HAProxy (recv and send on each side, an
 * epoll_wait now and then). No timeouts, no limits, no logs: not a proxy to
 * run, a measuring stick.
 *
 *   cc -O2 -o relay relay.c && ./relay LISTEN_PORT BACKEND_PORT...
 *
 * Everything is on 127.0.0.1. Stops on SIGTERM or SIGINT (the default action).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUF 16384
#define MAX_BACKENDS 16

/* One direction of a pair: bytes read from `from`, not yet all written to `to`. */
struct pipe {
    int from, to;
    char buf[BUF];
    size_t len, sent;
    int dead;
    struct pipe *other;
};

static int epfd;

static void die(const char *what)
{
    perror(what);
    exit(1);
}

static struct sockaddr_in local(int port)
{
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((unsigned short)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return a;
}

static void tune(int fd)
{
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
}

static int blocked(const struct pipe *p)
{
    return p->sent < p->len;
}

/*
 * Each socket is registered once, its event data the pipe that reads it: it
 * is watched for input unless that pipe waits to write, and for room while
 * the other pipe (which writes to it) waits.
 */
static void watch(struct pipe *reader, int op)
{
    unsigned events = (blocked(reader) ? 0 : EPOLLIN) | (blocked(reader->other) ? EPOLLOUT : 0);
    struct epoll_event ev = {.events = events, .data.ptr = reader};
    if (epoll_ctl(epfd, op, reader->from, &ev) < 0)
        die("epoll_ctl");
}

/* Moves what it can through `p`; 0 when the pair is done. */
static int pump(struct pipe *p)
{
    for (;;) {
        while (blocked(p)) {
            ssize_t n = send(p->to, p->buf + p->sent, p->len - p->sent, MSG_NOSIGNAL);
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                watch(p, EPOLL_CTL_MOD);
                watch(p->other, EPOLL_CTL_MOD);
                return 1;
            }
            if (n <= 0)
                return 0;
            p->sent += (size_t)n;
            if (!blocked(p)) {
                /* Room again: back to the usual registrations. */
                watch(p, EPOLL_CTL_MOD);
                watch(p->other, EPOLL_CTL_MOD);
            }
        }
        p->len = p->sent = 0;
        ssize_t n = recv(p->from, p->buf, BUF, 0);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return 1;
        if (n <= 0)
            return 0;
        p->len = (size_t)n;
        /* The usual case: all of it goes at once, no registration changes. */
        ssize_t m = send(p->to, p->buf, p->len, MSG_NOSIGNAL);
        if (m > 0)
            p->sent = (size_t)m;
        else if (!(m < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)))
            return 0;
        if (blocked(p)) {
            watch(p, EPOLL_CTL_MOD);
            watch(p->other, EPOLL_CTL_MOD);
            return 1;
        }
    }
}

/* Closes both sockets; the memory goes after the current batch of events. */
static void close_pair(struct pipe *p, struct pipe **graveyard, int *buried)
{
    struct pipe *q = p->other;
    if (p->dead)
        return;
    p->dead = q->dead = 1;
    close(p->from);
    close(q->from);
    graveyard[(*buried)++] = p < q ? p : q;
}

int main(int argc, char **argv)
{
    if (argc < 3 || argc - 2 > MAX_BACKENDS) {
        fprintf(stderr, "usage: relay LISTEN_PORT BACKEND_PORT... (up to %d)\n", MAX_BACKENDS);
        return 2;
    }
    int backends[MAX_BACKENDS], nbackends = argc - 2, next = 0;
    for (int i = 0; i < nbackends; i++)
        backends[i] = atoi(argv[i + 2]);

    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = local(atoi(argv[1]));
    if (bind(lfd, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(lfd, 4096) < 0)
        die("listen");
    epfd = epoll_create1(0);
    struct epoll_event lev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(epfd, EPOLL_CTL_ADD, lfd, &lev);

    struct epoll_event events[64];
    struct pipe *graveyard[64];
    for (;;) {
        int n = epoll_wait(epfd, events, 64, -1);
        if (n < 0 && errno != EINTR)
            die("epoll_wait");
        int buried = 0;
        for (int i = 0; i < n; i++) {
            struct pipe *p = events[i].data.ptr;
            if (p == NULL) {
                int cfd = accept(lfd, NULL, NULL);
                if (cfd < 0)
                    continue;
                int bfd = socket(AF_INET, SOCK_STREAM, 0);
                struct sockaddr_in b = local(backends[next++ % nbackends]);
                if (connect(bfd, (struct sockaddr *)&b, sizeof b) < 0) {
                    close(cfd);
                    close(bfd);
                    continue;
                }
                tune(cfd);
                tune(bfd);
                /* Both directions in one allocation: [0] client -> backend. */
                struct pipe *pair = calloc(2, sizeof *pair);
                if (pair == NULL)
                    die("calloc");
                pair[0].from = pair[1].to = cfd;
                pair[0].to = pair[1].from = bfd;
                pair[0].other = &pair[1];
                pair[1].other = &pair[0];
                watch(&pair[0], EPOLL_CTL_ADD);
                watch(&pair[1], EPOLL_CTL_ADD);
                continue;
            }
            if (p->dead)
                continue;
            /* Room on p's socket: the other pipe writes there. */
            if ((events[i].events & EPOLLOUT) && !pump(p->other)) {
                close_pair(p, graveyard, &buried);
                continue;
            }
            if ((events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) && !pump(p))
                close_pair(p, graveyard, &buried);
        }
        for (int i = 0; i < buried; i++)
            free(graveyard[i]);
    }
}

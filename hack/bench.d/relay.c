// relay: the L7 benchmark's floor (hack/bench.d/proxy.sh). A TCP relay that
// only copies bytes: one thread, one epoll set, non-blocking sockets, each
// read written at once to the other side. No parsing, no policy, no runtime.
// What a userspace proxy on this machine cannot go below is what this costs:
// the loopback reads and writes, and the wake-ups.
//
//	relay LISTEN_PORT UPSTREAM_PORT    (both on 127.0.0.1)
//	relay -t LISTEN_PORT LISTEN_MARK UPSTREAM_MARK
//
// The second form is the relay on the path the built-in engine runs on when
// deployed (bpf.BenchmarkL7Throughput): an IPv4 listener on LISTEN_PORT with
// IP_TRANSPARENT and SO_MARK LISTEN_MARK, as the engine's, to which the
// datapath assigns redirected connections, each relayed to its original
// destination (the accepted socket's local address) on a socket with SO_MARK
// UPSTREAM_MARK, the source identity's from-proxy mark. Needs CAP_NET_ADMIN.
//
// It prints "listening ADDR:PORT" once it accepts, and runs until killed.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_FDS 65536

static int peer[MAX_FDS];

// Transparent mode (-t): the upstream is each connection's original
// destination, dialed with this mark.
static int transparent;
static unsigned upstream_mark;

static struct sockaddr_in loopback(int port)
{
	struct sockaddr_in a = {
		.sin_family = AF_INET,
		.sin_port = htons(port),
		.sin_addr.s_addr = htonl(INADDR_LOOPBACK),
	};
	return a;
}

// write_all writes n bytes of b to the non-blocking socket fd, waiting for
// room when it is full (rare: the benchmark's messages are small).
static int write_all(int fd, const char *b, ssize_t n)
{
	while (n > 0) {
		ssize_t w = write(fd, b, n);
		if (w < 0 && errno == EAGAIN) {
			struct pollfd p = {.fd = fd, .events = POLLOUT};
			poll(&p, 1, -1);
			continue;
		}
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0)
			return -1;
		b += w;
		n -= w;
	}
	return 0;
}

static void watch(int ep, int fd)
{
	struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
	epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
}

// accept_all takes every pending client and connects it to the upstream.
static void accept_all(int lfd, int ep, int upstream_port)
{
	int one = 1;
	for (;;) {
		int c = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (c < 0)
			return;
		int u = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		struct sockaddr_in ua = loopback(upstream_port);
		socklen_t ualen = sizeof ua;
		if (transparent && (getsockname(c, (struct sockaddr *)&ua, &ualen) < 0 ||
				    (u >= 0 && setsockopt(u, SOL_SOCKET, SO_MARK, &upstream_mark, sizeof upstream_mark) < 0))) {
			perror("relay: original destination or upstream mark");
			close(c);
			if (u >= 0)
				close(u);
			continue;
		}
		// A blocking connect: on loopback it is immediate, on the deployed
		// path one round trip between the host and a container.
		if (u < 0 || u >= MAX_FDS || c >= MAX_FDS || connect(u, (struct sockaddr *)&ua, sizeof ua) < 0) {
			close(c);
			if (u >= 0)
				close(u);
			continue;
		}
		if (fcntl(u, F_SETFL, O_NONBLOCK) < 0) {
			close(c);
			close(u);
			continue;
		}
		setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
		setsockopt(u, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
		peer[c] = u;
		peer[u] = c;
		watch(ep, c);
		watch(ep, u);
	}
}

int main(int argc, char **argv)
{
	transparent = argc == 5 && strcmp(argv[1], "-t") == 0;
	if (argc != 3 && !transparent) {
		fprintf(stderr, "usage: relay LISTEN_PORT UPSTREAM_PORT\n"
				"       relay -t LISTEN_PORT LISTEN_MARK UPSTREAM_MARK\n");
		return 2;
	}
	int lport = atoi(argv[1 + transparent]), uport = transparent ? 0 : atoi(argv[2]), one = 1;
	int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	struct sockaddr_in la = loopback(lport);
	socklen_t alen = sizeof la;
	setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	if (transparent) {
		unsigned listen_mark = strtoul(argv[3], NULL, 0);
		upstream_mark = strtoul(argv[4], NULL, 0);
		la.sin_addr.s_addr = htonl(INADDR_ANY);
		if (setsockopt(lfd, SOL_IP, IP_TRANSPARENT, &one, sizeof one) < 0 ||
		    setsockopt(lfd, SOL_SOCKET, SO_MARK, &listen_mark, sizeof listen_mark) < 0) {
			perror("relay: IP_TRANSPARENT or SO_MARK");
			return 1;
		}
	}
	if (bind(lfd, (struct sockaddr *)&la, sizeof la) < 0 || listen(lfd, 1024) < 0 ||
	    getsockname(lfd, (struct sockaddr *)&la, &alen) < 0) {
		perror("relay: listen");
		return 1;
	}
	int ep = epoll_create1(EPOLL_CLOEXEC);
	watch(ep, lfd);
	printf("listening %s:%d\n", inet_ntoa(la.sin_addr), ntohs(la.sin_port));
	fflush(stdout);

	static char buf[64 << 10];
	struct epoll_event evs[256];
	for (;;) {
		int n = epoll_wait(ep, evs, 256, -1);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			perror("relay: epoll_wait");
			return 1;
		}
		for (int i = 0; i < n; i++) {
			int fd = evs[i].data.fd;
			if (fd == lfd) {
				accept_all(lfd, ep, uport);
				continue;
			}
			ssize_t m = read(fd, buf, sizeof buf);
			if (m < 0 && (errno == EAGAIN || errno == EINTR))
				continue;
			if (m <= 0 || write_all(peer[fd], buf, m) < 0) {
				close(peer[fd]);
				close(fd);
			}
		}
	}
}

/*
 * dnsload: a DNS server and load client in C, for bench/dns_bench.py. The Python ones
 * (simnode.dns) reach 6-12k queries/s on this machine: they, not the capture, set the rate.
 *
 *   dnsload server <port>
 *       answers every A query on UDP and TCP, IPv4 and IPv6, with one A record (10.96.9.9);
 *       prints {"listening": true} when ready and {"answered": N} on SIGTERM/SIGINT.
 *   dnsload client <server-ip> <udp|tcp> <count> <window> <timeout-ms> [<rate>]
 *       <count> queries cycling through 50 names (svcN.bench.svc.cluster.local) from one
 *       connected UDP socket or one TCP connection (queries pipelined, RFC 7766, one write
 *       per message as stub resolvers and servers do), at most <window> outstanding, at most
 *       <rate> per second if given (> 0); prints one JSON line: sent, answered, lost,
 *       elapsed_s, qps.
 *
 * One thread each, non-blocking sockets, epoll/poll: the load is bounded by the two cores it
 * shares with the DNS server and the collector, as on a busy node.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define NAMES 50
#define MAXMSG 512

static volatile sig_atomic_t stop;
static void on_signal(int sig) { (void)sig; stop = 1; }

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *what)
{
	perror(what);
	exit(1);
}

/* ---- server ------------------------------------------------------------------------------ */

/* The answer to query q (len bytes) into out; 0 if q is not a query we answer. */
static int answer(const unsigned char *q, int len, unsigned char *out)
{
	int pos = 12;

	if (len < 17 || len > MAXMSG - 16 || (q[2] & 0x80))
		return 0;
	while (pos < len && q[pos] != 0) {
		if (q[pos] > 63)
			return 0;
		pos += q[pos] + 1;
	}
	pos += 5; /* root label, qtype, qclass */
	if (pos > len)
		return 0;
	memcpy(out, q, pos);
	out[2] = 0x81; /* QR, RD */
	out[3] = 0x80; /* RA, NOERROR */
	out[4] = 0, out[5] = 1, out[6] = 0, out[7] = 1;
	memset(out + 8, 0, 4);
	static const unsigned char rr[] = {0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 10, 96, 9, 9};
	memcpy(out + pos, rr, sizeof(rr));
	return pos + (int)sizeof(rr);
}

struct conn {
	int fd;
	int used;
	unsigned char in[65536 + 2];
};

static int listen_on(int family, int type, int port)
{
	int fd = socket(family, type | SOCK_NONBLOCK, 0), one = 1;

	if (fd < 0)
		die("socket");
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (family == AF_INET6) {
		struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_port = htons(port)};

		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
		a.sin6_addr = in6addr_any;
		if (bind(fd, (struct sockaddr *)&a, sizeof(a)))
			die("bind6");
	} else {
		struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};

		if (bind(fd, (struct sockaddr *)&a, sizeof(a)))
			die("bind");
	}
	if (type == SOCK_STREAM && listen(fd, 1024))
		die("listen");
	return fd;
}

static long answered;

static void serve_udp(int fd)
{
	unsigned char q[MAXMSG], r[MAXMSG];
	struct sockaddr_storage peer;

	for (;;) {
		socklen_t plen = sizeof(peer);
		int n = recvfrom(fd, q, sizeof(q), 0, (struct sockaddr *)&peer, &plen);
		int m;

		if (n < 0)
			return;
		m = answer(q, n, r);
		if (m && sendto(fd, r, m, 0, (struct sockaddr *)&peer, plen) == m)
			answered++;
	}
}

/* Read what a TCP client sent, answer each whole framed query; -1 when it is gone. */
static int serve_tcp(struct conn *c)
{
	for (;;) {
		int n = read(c->fd, c->in + c->used, sizeof(c->in) - c->used);
		int pos = 0;
		unsigned char out[16384];

		if (n == 0)
			return -1;
		if (n < 0)
			return errno == EAGAIN ? 0 : -1;
		c->used += n;
		while (c->used - pos >= 2) {
			int len = (c->in[pos] << 8) | c->in[pos + 1];
			int m;

			if (c->used - pos < 2 + len)
				break;
			m = answer(c->in + pos + 2, len, out + 2);
			if (m) {
				out[0] = m >> 8;
				out[1] = m & 0xff;
				if (write(c->fd, out, m + 2) != m + 2)
					return -1;
				answered++;
			}
			pos += 2 + len;
		}
		memmove(c->in, c->in + pos, c->used - pos);
		c->used -= pos;
	}
}

static int server(int port)
{
	int fds[4] = {listen_on(AF_INET, SOCK_DGRAM, port), listen_on(AF_INET6, SOCK_DGRAM, port),
		      listen_on(AF_INET, SOCK_STREAM, port), listen_on(AF_INET6, SOCK_STREAM, port)};
	int ep = epoll_create1(0);
	struct epoll_event ev, evs[64];

	for (int i = 0; i < 4; i++) {
		ev.events = EPOLLIN;
		ev.data.u64 = (uint64_t)i;
		epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &ev);
	}
	signal(SIGTERM, on_signal);
	signal(SIGINT, on_signal);
	printf("{\"listening\": true}\n");
	fflush(stdout);
	while (!stop) {
		int n = epoll_wait(ep, evs, 64, 200);

		for (int i = 0; i < n; i++) {
			uint64_t tag = evs[i].data.u64;

			if (tag < 2) {
				serve_udp(fds[tag]);
			} else if (tag < 4) {
				int cfd = accept4(fds[tag], NULL, NULL, SOCK_NONBLOCK), one = 1;
				struct conn *c;

				if (cfd < 0)
					continue;
				setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
				c = calloc(1, sizeof(*c));
				c->fd = cfd;
				ev.events = EPOLLIN;
				ev.data.ptr = c;
				epoll_ctl(ep, EPOLL_CTL_ADD, cfd, &ev);
			} else {
				struct conn *c = evs[i].data.ptr;

				if (serve_tcp(c) < 0) {
					close(c->fd);
					free(c);
				}
			}
		}
	}
	printf("{\"answered\": %ld}\n", answered);
	return 0;
}

/* ---- client ------------------------------------------------------------------------------ */

static int build_query(unsigned char *out, uint16_t txid, int name)
{
	char text[64];
	int pos = 12, n = snprintf(text, sizeof(text), "svc%d.bench.svc.cluster.local", name);
	char *label = text;

	memset(out, 0, 12);
	out[0] = txid >> 8, out[1] = txid & 0xff, out[2] = 0x01, out[5] = 1;
	while (label < text + n) {
		char *dot = strchr(label, '.');
		int len = dot ? dot - label : (int)strlen(label);

		out[pos++] = len;
		memcpy(out + pos, label, len);
		pos += len;
		label += len + 1;
	}
	out[pos++] = 0;
	out[pos++] = 0, out[pos++] = 1, out[pos++] = 0, out[pos++] = 1;
	return pos;
}

static double sent_at[65536];

static int client(const char *server, int tcp, long count, int window, double timeout_s,
		  double rate)
{
	struct sockaddr_storage sa = {0};
	socklen_t salen;
	int fd;
	long sent = 0, done = 0, lost = 0, outstanding = 0;
	uint16_t txid = (uint16_t)(getpid() * 7919);
	unsigned char buf[65536 + 2];
	int used = 0;
	double start, last_sweep;

	if (strchr(server, ':')) {
		struct sockaddr_in6 *a = (struct sockaddr_in6 *)&sa;

		a->sin6_family = AF_INET6;
		a->sin6_port = htons(53);
		if (inet_pton(AF_INET6, server, &a->sin6_addr) != 1)
			die("address");
		salen = sizeof(*a);
	} else {
		struct sockaddr_in *a = (struct sockaddr_in *)&sa;

		a->sin_family = AF_INET;
		a->sin_port = htons(53);
		if (inet_pton(AF_INET, server, &a->sin_addr) != 1)
			die("address");
		salen = sizeof(*a);
	}
	fd = socket(sa.ss_family, tcp ? SOCK_STREAM : SOCK_DGRAM, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sa, salen))
		die("connect");
	if (tcp) {
		int one = 1;

		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	}
	for (int i = 0; i < 65536; i++)
		sent_at[i] = -1;
	start = last_sweep = now_s();
	while (done + lost < count) {
		unsigned char out[16384];
		int olen = 0;
		struct pollfd p = {.fd = fd, .events = POLLIN};

		while (sent < count && outstanding < window && olen + MAXMSG < (int)sizeof(out)) {
			int n;

			if (rate > 0 && sent >= rate * (now_s() - start))
				break;

			txid++;
			if (sent_at[txid] >= 0)
				break;
			n = build_query(out + olen + (tcp ? 2 : 0), txid, (int)(sent % NAMES));
			if (tcp) {
				out[olen] = n >> 8, out[olen + 1] = n & 0xff;
				if (write(fd, out + olen, n + 2) != n + 2)
					die("write");
			} else if (send(fd, out, n, 0) != n) {
				die("send");
			}
			sent_at[txid] = now_s();
			sent++;
			outstanding++;
		}
		if (poll(&p, 1, rate > 0 ? 1 : 50) > 0) {
			for (;;) {
				int n;

				if (tcp) {
					n = recv(fd, buf + used, sizeof(buf) - used, MSG_DONTWAIT);
					if (n == 0)
						die("server closed the connection");
				} else {
					n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
				}
				if (n < 0)
					break;
				if (!tcp) {
					if (n >= 2 && sent_at[(buf[0] << 8) | buf[1]] >= 0) {
						sent_at[(buf[0] << 8) | buf[1]] = -1;
						done++;
						outstanding--;
					}
					continue;
				}
				used += n;
				int pos = 0;

				while (used - pos >= 2) {
					int len = (buf[pos] << 8) | buf[pos + 1];
					uint16_t id;

					if (used - pos < 2 + len)
						break;
					id = (buf[pos + 2] << 8) | buf[pos + 3];
					if (len >= 2 && sent_at[id] >= 0) {
						sent_at[id] = -1;
						done++;
						outstanding--;
					}
					pos += 2 + len;
				}
				memmove(buf, buf + pos, used - pos);
				used -= pos;
			}
		}
		double now = now_s();

		if (now - last_sweep > 0.05) {
			for (int i = 0; i < 65536; i++) {
				if (sent_at[i] >= 0 && now - sent_at[i] > timeout_s) {
					sent_at[i] = -1;
					lost++;
					outstanding--;
				}
			}
			last_sweep = now;
		}
	}
	double elapsed = now_s() - start;

	printf("{\"sent\": %ld, \"answered\": %ld, \"lost\": %ld, \"elapsed_s\": %.6f, "
	       "\"qps\": %.1f}\n", sent, done, lost, elapsed, elapsed > 0 ? done / elapsed : 0.0);
	close(fd);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 3 && !strcmp(argv[1], "server"))
		return server(atoi(argv[2]));
	if ((argc == 7 || argc == 8) && !strcmp(argv[1], "client") &&
	    (!strcmp(argv[3], "udp") || !strcmp(argv[3], "tcp")))
		return client(argv[2], !strcmp(argv[3], "tcp"), atol(argv[4]), atoi(argv[5]),
			      atoi(argv[6]) / 1000.0, argc == 8 ? atof(argv[7]) : 0);
	fprintf(stderr, "usage: dnsload server <port> | dnsload client <ip> <udp|tcp> <count> "
			"<window> <timeout-ms> [<rate>]\n");
	return 2;
}

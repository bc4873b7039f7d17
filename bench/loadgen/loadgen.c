/*
 * loadgen: short TCP connections as fast as the machine allows, for bench/collector_bench.py.
 *
 *   loadgen server <port> <threads>                 accept, read to EOF, reply 1 byte, close
 *   loadgen client <host> <port> <threads> <secs>   connect, send 1 byte, shut down, read
 *                                                   to EOF, close; prints "connections N errors E"
 *
 * Each connection is complete (handshake, a byte each way, FIN both ways), so the kernel does
 * every state change the collector's program sees. SO_LINGER is not used: the client's socket
 * ends in TIME_WAIT, as real clients' do; tcp_tw_reuse lets ports be reused.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static struct sockaddr_in target;
static double duration_s;
static int listen_fd;

struct counts {
	long ok;
	long errors;
};

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void *client_thread(void *arg)
{
	struct counts *c = arg;
	double end = now_s() + duration_s;
	char byte = 'x', buf[64];

	while (now_s() < end) {
		int fd = socket(AF_INET, SOCK_STREAM, 0);
		if (fd < 0) {
			c->errors++;
			continue;
		}
		if (connect(fd, (struct sockaddr *)&target, sizeof(target)) || write(fd, &byte, 1) != 1) {
			c->errors++;
			close(fd);
			continue;
		}
		shutdown(fd, SHUT_WR);
		while (read(fd, buf, sizeof(buf)) > 0)
			;
		close(fd);
		c->ok++;
	}
	return NULL;
}

static void *server_thread(void *arg)
{
	char buf[64], byte = 'y';

	(void)arg;
	for (;;) {
		int fd = accept(listen_fd, NULL, NULL);
		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			return NULL;
		}
		while (read(fd, buf, sizeof(buf)) > 0)
			;
		if (write(fd, &byte, 1) < 0)
			perror("write");
		close(fd);
	}
}

int main(int argc, char **argv)
{
	int threads, one = 1;
	pthread_t tids[64];
	struct counts counts[64];
	long ok = 0, errors = 0;

	if (argc == 4 && !strcmp(argv[1], "server")) {
		struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = htons(atoi(argv[2])) };

		threads = atoi(argv[3]);
		listen_fd = socket(AF_INET, SOCK_STREAM, 0);
		setsockopt(listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		if (bind(listen_fd, (struct sockaddr *)&addr, sizeof(addr)) || listen(listen_fd, 4096)) {
			perror("bind/listen");
			return 1;
		}
		printf("listening\n");
		fflush(stdout);
		for (int i = 0; i < threads && i < 64; i++)
			pthread_create(&tids[i], NULL, server_thread, NULL);
		pthread_join(tids[0], NULL);
		return 0;
	}
	if (argc == 6 && !strcmp(argv[1], "client")) {
		target.sin_family = AF_INET;
		target.sin_port = htons(atoi(argv[3]));
		if (inet_pton(AF_INET, argv[2], &target.sin_addr) != 1) {
			fprintf(stderr, "bad address %s\n", argv[2]);
			return 2;
		}
		threads = atoi(argv[4]);
		duration_s = atof(argv[5]);
		if (threads < 1 || threads > 64)
			return 2;
		memset(counts, 0, sizeof(counts));
		for (int i = 0; i < threads; i++)
			pthread_create(&tids[i], NULL, client_thread, &counts[i]);
		for (int i = 0; i < threads; i++) {
			pthread_join(tids[i], NULL);
			ok += counts[i].ok;
			errors += counts[i].errors;
		}
		printf("connections %ld errors %ld\n", ok, errors);
		return 0;
	}
	fprintf(stderr, "usage: loadgen server PORT THREADS | client HOST PORT THREADS SECS\n");
	return 2;
}

/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * reserve.h: a ring-buffer reservation that survives the ring's lock giving up.
 *
 * Recent kernels (6.15+) take a BPF ring buffer's lock with a resilient spinlock that gives up
 * (deadlock check, timeout) rather than spin forever, so a reserve can fail on a ring that is
 * far from full. Measured on this VM under bench/collector_bench.py: about once per million
 * events, in softirq, with the 16 MiB ring empty (traced with bpf_printk); with one retry
 * the collector still lost about one event per bench run, with up to RESERVE_TRIES none
 * (one event needed a retry). A full ring is not retried: nothing frees space until user
 * space reads.
 */
#ifndef __FLOWSCOPE_RESERVE_H
#define __FLOWSCOPE_RESERVE_H

#define RESERVE_TRIES 4

/* A record of `size` bytes from `ring`, or NULL; `*busy` is set when a try failed while the
 * ring had room (the caller counts it). `size` must be a constant: inline only. */
static __always_inline void *reserve_retrying(void *ring, __u64 size, bool *busy)
{
	void *rec;
	int i;

#pragma unroll
	for (i = 0; i < RESERVE_TRIES; i++) {
		rec = bpf_ringbuf_reserve(ring, size, 0);
		if (rec)
			return rec;
		/* A record takes its size plus an 8-byte header, rounded up to 8. */
		if (bpf_ringbuf_query(ring, BPF_RB_AVAIL_DATA) + size + 16 >
		    bpf_ringbuf_query(ring, BPF_RB_RING_SIZE))
			return NULL;
		*busy = true;
	}
	return NULL;
}

#endif /* __FLOWSCOPE_RESERVE_H */

/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* What the marker (marker.bpf.c) and the watcher (watcher.bpf.c) share: the flow map's key and
 * value (the watcher writes into the marker's pinned map, so one definition for both) and the
 * flow label's entropy layout (SPEC.md section 2). */
#ifndef SCITAGS_BPF_H
#define SCITAGS_BPF_H

#include <linux/bpf.h>

struct flow_key {
	__u8 saddr[16]; /* IPv6, or IPv4 in the first 4 bytes */
	__u8 daddr[16];
	__u16 sport; /* host byte order */
	__u16 dport;
	__u8 proto;
	__u8 pad[3];
};

struct flow_tag {
	__u32 label; /* full 20-bit flow label, entropy included (drawn once per flow) */
	__u16 exp;
	__u8 act;
	__u8 flags; /* bit 0: the direction the producer reported (used to restore after restart) */
};

/* 5 entropy bits on label bit positions 0, 1, 8, 18, 19 */
static __always_inline __u32 spread_entropy(__u32 e)
{
	return (e & 1) | (e & 2) | ((e >> 2) & 1) << 8 | ((e >> 3) & 1) << 18 |
	       ((e >> 4) & 1) << 19;
}

/* Debug builds (-DSCITAGD_DEBUG: marker-debug.bpf.o and watcher-debug.bpf.o, loaded with
 * debugMode: true) report each decision in the kernel's trace buffer, one line each, read with
 * `cat /sys/kernel/tracing/trace_pipe`. Not libbpf's bpf_printk: its format strings go into
 * .rodata, whose size the watcher's loader checks (its load-time settings live there); these
 * land in .rodata.str1.1, a map of their own. bpf_trace_printk takes at most three arguments. */
#ifdef SCITAGD_DEBUG
#define DBG(fmt, ...)                                                                              \
	({                                                                                         \
		char ____fmt[] = "scitagd " fmt;                                                   \
		bpf_trace_printk(____fmt, sizeof(____fmt), ##__VA_ARGS__);                         \
	})
#else
#define DBG(fmt, ...) ({})
#endif

#endif

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * scitagd connection watcher: a cgroup sock_ops program that sees every TCP connection of the
 * cgroup as it is established and closed.
 *
 * At ESTABLISHED it matches the port rules; a matching connection is written into the marker's
 * flow map right here, before the first data byte is sent, so the first data packet already
 * carries the tag. Established/closed events (with the final byte counts, read from
 * bpf_sock_ops, which needs no CO-RE) go to user space over a ring buffer.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "scitags.bpf.h"

#define AF_INET 2
#define AF_INET6 10
#define TCP_CLOSE 7
#define MAX_RULES 64
#define MAX_RULE_TAGS 4096

/* rule.used */
#define R_USED 1
#define R_NETS 2 /* the remote must be in this rule's networks */
#define R_USER 4 /* user space decides (uid/cgroup conditions it checks through sock_diag) */
#define R_RANDOM 8 /* the rule's tag list is drawn from at random (else in turn) */
#define R_ALL_NETS 16 /* ignore_nets does not apply to this rule (flowd-go's iperf3 plugin) */

struct rule {
	__u16 lport_lo, lport_hi; /* local port range; 0..0 means any */
	__u16 rport_lo, rport_hi; /* remote port range */
	__u16 exp;
	__u8 act;
	__u8 used; /* R_* bits */
	__u16 tags_first; /* a list of tags in rule_tags: [tags_first, tags_first + tags_count) */
	__u16 tags_count; /* 0: exp and act above */
	__u32 next; /* the list's next index when taken in turn (atomic: connections on any CPU) */
};

struct rule_tag {
	__u16 exp;
	__u8 act;
	__u8 pad;
};

/* Remote addresses as 16 bytes, IPv4 mapped (::ffff:a.b.c.d), for both address families. */
struct net_key {
	__u32 prefixlen;
	__u8 addr[16];
};

struct rule_net_key {
	__u32 prefixlen; /* 32 (the rule index) + the network's prefix length */
	__u32 rule;
	__u8 addr[16];
};

struct event {
	__u8 type; /* 1 established, 2 closed, 3 sample (enrichers.skops) */
	__u8 family;
	__u8 matched;
	__u8 act;
	__u16 exp;
	__u16 lport;
	__u16 rport;
	__u16 pad;
	__u32 label;
	__u8 laddr[16];
	__u8 raddr[16];
	__u64 bytes_acked;
	__u64 bytes_received;
	__u32 srtt_us;
	__u32 total_retrans;
	__u32 snd_cwnd;
	__u32 mss;
	__u32 rtt_min;
	__u32 pad2;
};

/* Never used: keeps struct event in the object's BTF, where tests/marker/test_abi.py reads its
 * layout to check the Python mirror (bpf/abi.py). A ring buffer map has no value type to carry it. */
const struct event *unused_event __attribute__((unused));

struct wcfg {
	__u64 period_ns; /* enrichers.period */
	__u32 sample; /* enrichers.skops on: RTT callbacks on every connection */
	__u32 pad;
};

struct sock_state {
	__u64 last_ns; /* last sample sent: the per-socket rate limit */
	__u32 matched;
	__u32 pad;
};

/* The marker's map: the loader points this at the pinned one (bpf_map__reuse_fd). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 262144);
	__type(key, struct flow_key);
	__type(value, struct flow_tag);
} flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_RULES);
	__type(key, __u32);
	__type(value, struct rule);
} rules SEC(".maps");

/* Tag lists of rules that hand out several tags (plugins.iperf3's experimentIDs/activityIDs). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_RULE_TAGS);
	__type(key, __u32);
	__type(value, struct rule_tag);
} rule_tags SEC(".maps");

/* Set by the loader before the program is loaded and read-only to it, so the verifier drops the
 * sampling code when enrichers.skops is off (libbpf-bootstrap's const volatile style). */
const volatile struct wcfg wcfg = {};

/* Remote networks no rule applies to (internal networks by default). */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1024);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct net_key);
	__type(value, __u8);
} ignore_nets SEC(".maps");

/* Per rule: the remote networks it is limited to. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 4096);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct rule_net_key);
	__type(value, __u8);
} rule_nets SEC(".maps");

/* The flows user space watches (any source), both directions; filled by the skops enricher. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 131072);
	__type(key, struct flow_key);
	__type(value, __u8);
} watched SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct sock_state);
} sock_state SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} events SEC(".maps");

static __always_inline __u32 rev9(__u32 v)
{
	__u32 r = 0;

	for (int i = 0; i < 9; i++)
		r |= ((v >> i) & 1) << (8 - i);
	return r;
}

/* The verifier allows only 4-byte loads of these context fields; clang would merge two
 * neighbouring ones into one 8-byte load ("invalid bpf_context access"), so read them through
 * volatile pointers, one word at a time. */
#define CTX_U32(f) (*(volatile __u32 *)&(f))

static __always_inline void addrs(struct bpf_sock_ops *skops, __u8 *l, __u8 *r)
{
	/* IPv4 goes into the first 4 bytes, as the marker's user space writes it */
	if (skops->family == AF_INET6) {
		__u32 la[4], ra[4];
		la[0] = CTX_U32(skops->local_ip6[0]);
		la[1] = CTX_U32(skops->local_ip6[1]);
		la[2] = CTX_U32(skops->local_ip6[2]);
		la[3] = CTX_U32(skops->local_ip6[3]);
		ra[0] = CTX_U32(skops->remote_ip6[0]);
		ra[1] = CTX_U32(skops->remote_ip6[1]);
		ra[2] = CTX_U32(skops->remote_ip6[2]);
		ra[3] = CTX_U32(skops->remote_ip6[3]);
		__builtin_memcpy(l, la, 16);
		__builtin_memcpy(r, ra, 16);
	} else {
		__u32 la = skops->local_ip4, ra = skops->remote_ip4;
		__builtin_memcpy(l, &la, 4);
		__builtin_memcpy(r, &ra, 4);
	}
}

static __always_inline void emit(struct bpf_sock_ops *skops, __u8 type, __u8 matched, __u16 exp,
				 __u8 act, __u32 label)
{
	struct event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);

	if (!e)
		return;
	__builtin_memset(e, 0, sizeof(*e));
	e->type = type;
	e->family = skops->family;
	e->matched = matched;
	e->exp = exp;
	e->act = act;
	e->label = label;
	e->lport = skops->local_port;
	e->rport = bpf_ntohl(skops->remote_port) & 0xFFFF;
	addrs(skops, e->laddr, e->raddr);
	e->bytes_acked = skops->bytes_acked;
	e->bytes_received = skops->bytes_received;
	e->srtt_us = skops->srtt_us >> 3;
	e->total_retrans = skops->total_retrans;
	e->snd_cwnd = skops->snd_cwnd;
	e->mss = skops->mss_cache;
	e->rtt_min = skops->rtt_min;
	bpf_ringbuf_submit(e, 0);
}

static __always_inline void keys(struct bpf_sock_ops *skops, struct flow_key *out,
				 struct flow_key *in)
{
	__u16 lport = skops->local_port;
	__u16 rport = bpf_ntohl(skops->remote_port) & 0xFFFF;

	addrs(skops, out->saddr, out->daddr);
	out->sport = lport;
	out->dport = rport;
	out->proto = 6;
	__builtin_memcpy(in->saddr, out->daddr, 16);
	__builtin_memcpy(in->daddr, out->saddr, 16);
	in->sport = rport;
	in->dport = lport;
	in->proto = 6;
}

static __always_inline void remember(struct bpf_sock_ops *skops, __u32 matched)
{
	struct bpf_sock *sk = skops->sk;

	if (!sk)
		return;
	struct sock_state *st = bpf_sk_storage_get(&sock_state, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (st)
		st->matched = matched;
}

static __always_inline void remote16(struct bpf_sock_ops *skops, __u8 *out)
{
	if (skops->family == AF_INET6) {
		__u32 ra[4];
		ra[0] = CTX_U32(skops->remote_ip6[0]);
		ra[1] = CTX_U32(skops->remote_ip6[1]);
		ra[2] = CTX_U32(skops->remote_ip6[2]);
		ra[3] = CTX_U32(skops->remote_ip6[3]);
		__builtin_memcpy(out, ra, 16);
	} else {
		__u32 v4 = skops->remote_ip4;
		__u32 mapped[4] = { 0, 0, bpf_htonl(0xFFFF), v4 };
		__builtin_memcpy(out, mapped, 16);
	}
}

/* The tag a matching rule gives this connection: its own, or the next of its list. */
static __always_inline void pick_tag(struct rule *r, __u16 *exp, __u8 *act)
{
	__u32 n = r->tags_count, idx;

	*exp = r->exp;
	*act = r->act;
	if (!n)
		return;
	if (r->used & R_RANDOM)
		idx = bpf_get_prandom_u32() % n;
	else
		idx = __sync_fetch_and_add(&r->next, 1) % n;
	__u32 k = r->tags_first + idx;
	struct rule_tag *t = bpf_map_lookup_elem(&rule_tags, &k);
	if (t) {
		*exp = t->exp;
		*act = t->act;
	}
}

static __always_inline int established(struct bpf_sock_ops *skops)
{
	__u16 lport = skops->local_port;
	__u16 rport = bpf_ntohl(skops->remote_port) & 0xFFFF;
	if (wcfg.sample) {
		/* every connection: a flow may be reported (pipe, API, firefly) after it started */
		bpf_sock_ops_cb_flags_set(skops,
					  skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_RTT_CB_FLAG);
		remember(skops, 0);
	}
	struct net_key nk = { .prefixlen = 128 };
	remote16(skops, nk.addr);
	int ignored = bpf_map_lookup_elem(&ignore_nets, &nk) != 0;

	for (__u32 i = 0; i < MAX_RULES; i++) {
		__u32 k = i;
		struct rule *r = bpf_map_lookup_elem(&rules, &k);
		if (!r || !r->used)
			break;
		if (ignored && !(r->used & R_ALL_NETS))
			continue;
		if (r->lport_hi && (lport < r->lport_lo || lport > r->lport_hi))
			continue;
		if (r->rport_hi && (rport < r->rport_lo || rport > r->rport_hi))
			continue;
		if (r->used & R_NETS) {
			struct rule_net_key rk = { .prefixlen = 32 + 128, .rule = i };
			__builtin_memcpy(rk.addr, nk.addr, 16);
			if (!bpf_map_lookup_elem(&rule_nets, &rk))
				continue;
		}
		__u16 exp;
		__u8 act;
		pick_tag(r, &exp, &act);
		if (r->used & R_USER) {
			/* a candidate: user space looks at the socket's uid and cgroup, then tags it */
			bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags |
							     BPF_SOCK_OPS_STATE_CB_FLAG);
			DBG("watcher: candidate lport=%u rport=%u rule=%u", lport, rport, i);
			emit(skops, 1, 2, exp, act, 0);
			return 1;
		}
		__u32 label = rev9(exp & 0x1FF) << 9 | (act & 0x3F) << 2 |
			      spread_entropy(bpf_get_prandom_u32() & 31);
		if (skops->family == AF_INET6) {
			struct flow_key out = {}, in = {};
			struct flow_tag tag = {
				.label = label, .exp = exp, .act = act, .flags = 1
			};
			keys(skops, &out, &in);
			bpf_map_update_elem(&flows, &out, &tag, BPF_ANY);
			/* Both ends of a connection can be in this cgroup (loopback, containers): the
			 * peer's socket owns this direction (flags 1) and keeps its own tag in it. */
			struct flow_tag *peer = bpf_map_lookup_elem(&flows, &in);
			if (!peer || !(peer->flags & 1)) {
				tag.flags = 0;
				bpf_map_update_elem(&flows, &in, &tag, BPF_ANY);
			}
		}
		/* a callback on every state change, to see the close */
		bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags |
						     BPF_SOCK_OPS_STATE_CB_FLAG);
		remember(skops, 1);
		DBG("watcher: tagged lport=%u rport=%u rule=%u", lport, rport, i);
		DBG("watcher: tag exp=%u act=%u label=0x%x", exp, act, label);
		emit(skops, 1, 1, exp, act, label);
		return 1;
	}
	if (ignored)
		DBG("watcher: ignored network lport=%u rport=%u", lport, rport);
	else
		DBG("watcher: no rule lport=%u rport=%u", lport, rport);
	return 1;
}

SEC("sockops")
int scitagd_watch(struct bpf_sock_ops *skops)
{
	if (skops->family != AF_INET6 && skops->family != AF_INET)
		return 1;
	switch (skops->op) {
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		return established(skops);
	case BPF_SOCK_OPS_RTT_CB: {
		struct bpf_sock *sk = skops->sk;
		struct flow_key out = {}, in = {};

		if (!wcfg.sample || !sk)
			return 1;
		keys(skops, &out, &in);
		if (!bpf_map_lookup_elem(&watched, &out))
			return 1;
		struct sock_state *st =
		    bpf_sk_storage_get(&sock_state, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
		if (!st)
			return 1;
		__u64 now = bpf_ktime_get_ns();
		if (now - st->last_ns < wcfg.period_ns)
			return 1; /* rate limit per socket, in the kernel */
		st->last_ns = now;
		emit(skops, 3, 0, 0, 0, 0);
		return 1;
	}
	case BPF_SOCK_OPS_STATE_CB:
		if (skops->args[1] == TCP_CLOSE) {
			if (skops->family == AF_INET6) {
				struct flow_key out = {}, in = {};
				keys(skops, &out, &in);
				bpf_map_delete_elem(&flows, &out);
				/* a peer socket still open here keeps marking its direction: a server's
				 * reset must not unmark what the local client still sends */
				struct flow_tag *peer = bpf_map_lookup_elem(&flows, &in);
				if (peer && !(peer->flags & 1))
					bpf_map_delete_elem(&flows, &in);
			}
			DBG("watcher: closed lport=%u rport=%u", skops->local_port,
			    bpf_ntohl(skops->remote_port) & 0xFFFF);
			emit(skops, 2, 1, 0, 0, 0);
		}
		return 1;
	}
	return 1;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";

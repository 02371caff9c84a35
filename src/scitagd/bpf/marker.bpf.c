// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * scitagd packet marker: a tc (clsact egress) program that tags IPv6 TCP/UDP packets of
 * registered flows with their experiment and activity, in the flow label (draft-03 layout)
 * or in an IPv6 Hop-by-Hop / Destination Options header (option 0x1E).
 *
 * Headers are read with bpf_skb_load_bytes() and written with bpf_skb_store_bytes(): both
 * work on non-linear skbs and keep every bounds check in one obvious place (the helper).
 * Only __sk_buff and packet bytes are touched, so no CO-RE and no vmlinux.h are needed and
 * one object serves kernels 5.14 (AlmaLinux 9) to 6.x.
 *
 * Whatever goes wrong, the packet leaves: every path returns PASS, unmarked packets are
 * counted by reason. PASS is TC_ACT_UNSPEC, not TC_ACT_OK: in direct-action mode OK would end
 * the clsact filter chain, and the filters other tools put after ours would never run.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "scitags.bpf.h"

#define ETH_HLEN 14
#define VLAN_HLEN 4
#define ETH_P_IPV6 0x86DD
#define ETH_P_8021Q 0x8100
#define ETH_P_8021AD 0x88A8
#define IPV6_HLEN 40
#define NEXTHDR_HOP 0
#define NEXTHDR_TCP 6
#define NEXTHDR_UDP 17
#define NEXTHDR_DEST 60
#define SCITAG_OPT_TYPE 0x1E
#define SCITAG_OPT_LEN 3
#define EXT_HLEN 8
#define PASS TC_ACT_UNSPEC

/* markingStrategy, set by the loader in the config map */
enum strategy { STRAT_LABEL = 0, STRAT_HBH = 1, STRAT_DEST = 2, STRAT_HBH_DEST = 3 };

/* why a packet of a tagged flow left unmarked (index of the `unmarked` map) */
enum reason {
	R_MTU = 0, /* the extension header would push a non-GSO packet over the MTU */
	R_ROOM = 1, /* bpf_skb_adjust_room() refused (e.g. no headroom) */
	R_STORE = 2, /* writing the header failed after making room: room removed again */
	R_VLAN = 3, /* an in-band VLAN tag could not be taken off for the extension header */
	R_MAX,
};

struct config {
	__u32 strategy;
	__u32 match_all; /* mark every IPv6 TCP/UDP packet with the tag below (perfSONAR hosts) */
	__u32 match_label; /* entropy bits zero: they come from the flow hash */
	__u16 match_exp;
	__u8 match_act;
	__u8 pad;
};

struct count_key {
	__u32 ifindex;
	__u16 exp;
	__u8 act;
	__u8 pad;
};

struct count_val {
	__u64 packets;
	__u64 bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 262144); /* the loader sets the configured size */
	__type(key, struct flow_key);
	__type(value, struct flow_tag);
} flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct config);
} config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct count_key);
	__type(value, struct count_val);
} marked SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, R_MAX);
	__type(key, __u32);
	__type(value, __u64);
} unmarked SEC(".maps");

struct ext_opt {
	__u8 nexthdr;
	__u8 hdrlen; /* in 8-octet units beyond the first: 0 */
	__u8 type;
	__u8 len;
	__u16 exp; /* network byte order */
	__u8 act;
	__u8 pad1;
};

static __always_inline void count_unmarked(__u32 reason)
{
	__u64 *n = bpf_map_lookup_elem(&unmarked, &reason);

	if (n)
		*n += 1;
}

static __always_inline void count_marked(struct __sk_buff *skb, __u16 exp, __u8 act)
{
	struct count_key k = { .ifindex = skb->ifindex, .exp = exp, .act = act };
	__u64 segs = skb->gso_segs ? skb->gso_segs : 1;
	struct count_val *v = bpf_map_lookup_elem(&marked, &k);

	if (v) {
		v->packets += segs;
		v->bytes += skb->len;
		return;
	}
	struct count_val init = { .packets = segs, .bytes = skb->len };
	bpf_map_update_elem(&marked, &k, &init, BPF_NOEXIST);
}

static __always_inline int set_label(struct __sk_buff *skb, __u32 l3, const __u8 *ip6, __u32 label)
{
	__u32 word;

	__builtin_memcpy(&word, ip6, 4); /* the header word as read, no second load */
	/* version and Traffic Class (DSCP + ECN) stay as the sender set them */
	word = (word & bpf_htonl(0xFFF00000)) | bpf_htonl(label & 0xFFFFF);
	return bpf_skb_store_bytes(skb, l3, &word, 4, 0);
}

static __always_inline int add_ext_headers(struct __sk_buff *skb, __u32 l3, __u8 nexthdr,
					   __u32 strategy, __u16 exp, __u8 act)
{
	struct ext_opt hdr[2] = {};
	__u32 n = strategy == STRAT_HBH_DEST ? 2 : 1;
	__u32 room = n * EXT_HLEN;
	__u32 mtu = 0;

	/* A GSO packet passes: adjust_room shrinks gso_size so every segment still fits. */
	if (bpf_check_mtu(skb, 0, &mtu, room, 0)) {
		count_unmarked(R_MTU);
		return -1;
	}
	if (bpf_skb_adjust_room(skb, room, BPF_ADJ_ROOM_NET, 0)) {
		count_unmarked(R_ROOM);
		return -1;
	}
	for (__u32 i = 0; i < 2; i++) {
		hdr[i].type = SCITAG_OPT_TYPE;
		hdr[i].len = SCITAG_OPT_LEN;
		hdr[i].exp = bpf_htons(exp);
		hdr[i].act = act;
	}
	__u8 first;
	if (strategy == STRAT_HBH_DEST) {
		hdr[0].nexthdr = NEXTHDR_DEST; /* Hop-by-Hop first, as RFC 8200 requires */
		hdr[1].nexthdr = nexthdr;
		first = NEXTHDR_HOP;
	} else {
		hdr[0].nexthdr = nexthdr;
		first = strategy == STRAT_HBH ? NEXTHDR_HOP : NEXTHDR_DEST;
	}
	__u16 plen;
	if (bpf_skb_load_bytes(skb, l3 + 4, &plen, 2))
		goto undo;
	plen = bpf_htons(bpf_ntohs(plen) + room);
	/* Two stores with constant sizes: the verifier wants a known length per call. */
	if (n == 2) {
		if (bpf_skb_store_bytes(skb, l3 + IPV6_HLEN, hdr, 2 * EXT_HLEN,
					BPF_F_RECOMPUTE_CSUM))
			goto undo;
	} else if (bpf_skb_store_bytes(skb, l3 + IPV6_HLEN, hdr, EXT_HLEN, BPF_F_RECOMPUTE_CSUM)) {
		goto undo;
	}
	if (bpf_skb_store_bytes(skb, l3 + 4, &plen, 2, 0) ||
	    bpf_skb_store_bytes(skb, l3 + 6, &first, 1, 0))
		goto undo;
	return 0;
undo:
	/* The IPv6 header is untouched until the last two stores; taking the room away
	 * again restores the original packet. */
	bpf_skb_adjust_room(skb, -(__s32)room, BPF_ADJ_ROOM_NET, 0);
	count_unmarked(R_STORE);
	return -1;
}

struct hdrs {
	__u8 ip6[IPV6_HLEN];
	__u16 ports[2];
};

/* The IPv6 header and the ports, read straight from the packet when they are in its linear
 * part (almost always: ~20 ns cheaper per packet than the helper), else copied by the helper.
 * Reading directly needs no unclone and so costs nothing for packets we leave alone. */
static __always_inline int read_hdrs(struct __sk_buff *skb, __u32 l3, struct hdrs *h)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;

	if (l3 > ETH_HLEN + VLAN_HLEN) /* a bound the verifier can see */
		return -1;
	if (data + l3 + sizeof(*h) <= end) {
		__builtin_memcpy(h, data + l3, sizeof(*h));
		return 0;
	}
	return bpf_skb_load_bytes(skb, l3, h, sizeof(*h));
}

static __always_inline int mark(struct __sk_buff *skb, __u32 l3, __u16 vlan_proto)
{
	struct hdrs h;
	__u32 zero = 0;

	if (read_hdrs(skb, l3, &h))
		return PASS;
	__u8 *ip6 = h.ip6;
	__u16 *ports = h.ports;
	if ((ip6[0] >> 4) != 6)
		return PASS;
	__u8 nexthdr = ip6[6];
	if (nexthdr != NEXTHDR_TCP && nexthdr != NEXTHDR_UDP)
		return PASS; /* no extension headers walked: ours are added, never parsed */

	struct config *cfg = bpf_map_lookup_elem(&config, &zero);
	if (!cfg)
		return PASS;

	struct flow_tag tag;
	if (cfg->match_all) {
		tag.exp = cfg->match_exp;
		tag.act = cfg->match_act;
		/* stable per flow: the kernel's flow hash of the 5-tuple */
		tag.label = cfg->match_label | spread_entropy(bpf_get_hash_recalc(skb) & 31);
	} else {
		struct flow_key key = {};
		__builtin_memcpy(key.saddr, ip6 + 8, 16);
		__builtin_memcpy(key.daddr, ip6 + 24, 16);
		key.sport = bpf_ntohs(ports[0]);
		key.dport = bpf_ntohs(ports[1]);
		key.proto = nexthdr;
		struct flow_tag *t = bpf_map_lookup_elem(&flows, &key);
		if (!t)
			return PASS;
		tag = *t;
	}

	DBG("marker: tagged sport=%u dport=%u if=%u", bpf_ntohs(ports[0]), bpf_ntohs(ports[1]),
	    skb->ifindex);
	if (cfg->strategy == STRAT_LABEL) {
		if (set_label(skb, l3, ip6, tag.label)) {
			count_unmarked(R_STORE);
			DBG("marker: unmarked reason=%u", R_STORE);
		} else {
			count_marked(skb, tag.exp, tag.act);
			DBG("marker: label=0x%x exp=%u act=%u", tag.label, tag.exp, tag.act);
		}
		return PASS;
	}

	/* Extension headers. An in-band VLAN tag sits between the Ethernet and IPv6 headers,
	 * where adjust_room cannot insert below it: take the tag off, insert, and push it
	 * back as an out-of-band tag that the device (or the stack) puts on the wire. */
	if (vlan_proto) {
		__u16 tci;
		if (bpf_skb_load_bytes(skb, ETH_HLEN, &tci, 2) || bpf_skb_vlan_pop(skb)) {
			count_unmarked(R_VLAN);
			return PASS;
		}
		l3 = ETH_HLEN;
		if (add_ext_headers(skb, l3, nexthdr, cfg->strategy, tag.exp, tag.act) == 0) {
			count_marked(skb, tag.exp, tag.act);
			DBG("marker: header=%u exp=%u act=%u vlan", cfg->strategy, tag.exp,
			    tag.act);
		}
		if (bpf_skb_vlan_push(skb, bpf_htons(vlan_proto), bpf_ntohs(tci)))
			count_unmarked(R_VLAN);
		return PASS;
	}
	if (add_ext_headers(skb, l3, nexthdr, cfg->strategy, tag.exp, tag.act) == 0) {
		count_marked(skb, tag.exp, tag.act);
		DBG("marker: header=%u exp=%u act=%u", cfg->strategy, tag.exp, tag.act);
	} else {
		DBG("marker: unmarked header=%u (no room or over the MTU)", cfg->strategy);
	}
	return PASS;
}

/* Devices with an Ethernet header, optionally one in-band 802.1Q/802.1ad tag. */
SEC("tc")
int scitagd_eth(struct __sk_buff *skb)
{
	__u16 proto;

	if (bpf_skb_load_bytes(skb, 12, &proto, 2))
		return PASS;
	if (proto == bpf_htons(ETH_P_IPV6))
		return mark(skb, ETH_HLEN, 0);
	if (proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD)) {
		__u16 inner;
		if (bpf_skb_load_bytes(skb, ETH_HLEN + 2, &inner, 2))
			return PASS;
		if (inner == bpf_htons(ETH_P_IPV6))
			return mark(skb, ETH_HLEN + VLAN_HLEN, bpf_ntohs(proto));
	}
	return PASS;
}

/* L3 devices (tun, wireguard, ip6 tunnels): the packet starts with the IPv6 header. */
SEC("tc")
int scitagd_l3(struct __sk_buff *skb)
{
	if (skb->protocol != bpf_htons(ETH_P_IPV6))
		return PASS;
	return mark(skb, 0, 0);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";

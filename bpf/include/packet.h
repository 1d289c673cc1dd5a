/* What both Membrane objects (datapath.c, bridge.c) share besides the map
 * layouts in membrane.h: the packet header constants and layouts they parse
 * (just the fields we read: no kernel headers that need asm/), the verdicts,
 * and reserving an event. Everything here is a define, a struct or a static
 * __always_inline function, so each object compiles its own copy and keeps
 * its own maps. */
#pragma once

#include "membrane.h"

#define ETH_HLEN 14
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define ETH_P_ARP 0x0806

#define IPPROTO_ICMP 1
#define IPPROTO_TCP 6
#define IPPROTO_AH 51
#define IPPROTO_UDP 17
#define IPPROTO_ICMPV6 58
#define IPPROTO_SCTP 132
#define NEXTHDR_HOP 0
#define NEXTHDR_ROUTING 43
#define NEXTHDR_FRAGMENT 44
#define NEXTHDR_AUTH 51
#define NEXTHDR_NONE 59
#define NEXTHDR_DEST 60

#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_ACK 0x10

#define PACKET_HOST 0

/* Pass lets later tc programs and filters run (TC_ACT_UNSPEC == TCX_NEXT). */
#define VERDICT_PASS TC_ACT_UNSPEC
#define VERDICT_DROP TC_ACT_SHOT

struct ipv4hdr {
	__u8 ver_ihl;
	__u8 tos;
	__u16 tot_len;
	__u16 id;
	__u16 frag_off;
	__u8 ttl;
	__u8 protocol;
	__u16 check;
	__u32 saddr;
	__u32 daddr;
};

struct ipv6hdr {
	__u32 vtc_flow;
	__u16 payload_len;
	__u8 nexthdr;
	__u8 hop_limit;
	__u8 saddr[16];
	__u8 daddr[16];
};

/* event_reserve reserves an event in the ring buffer events; when it is
 * full, the lost event is counted in slot COUNTER_EVENTS_LOST of the per-CPU
 * array counters and the result is 0. The caller fills every field it does
 * not want zero and submits. Both are the object's own maps (passed here,
 * inlined into a constant). */
static __always_inline struct event *event_reserve(void *events, void *counters)
{
	struct event *e = bpf_ringbuf_reserve(events, sizeof(*e), 0);
	if (!e) {
		__u32 slot = COUNTER_EVENTS_LOST;
		struct counter *c = bpf_map_lookup_elem(counters, &slot);
		if (c)
			c->packets++;
	}
	return e;
}

/* Shared definitions of the Membrane datapath: map layouts, reasons, flags.
 * Every struct here is mirrored in Go by bpf2go (-type); bpf/layout_test.go
 * checks the sizes, so C and Go never drift. Keep field order and explicit
 * padding: the Go side reads these bytes as they are. */
#pragma once

#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

/* Bumped whenever a map's meaning changes without its size changing; a pinned
 * config map with another ABI makes the loader replace every pinned map. */
#define MEMBRANE_ABI 4

/* Directions, as in policies.Direction: relative to the container. */
#define DIR_INGRESS 0
#define DIR_EGRESS 1

/* Reserved identities (policies/types.go). */
#define IDENTITY_ANY 0
#define IDENTITY_WORLD 2
#define IDENTITY_INIT 5
#define FIRST_LOCAL_IDENTITY 256 /* allocated identities start here */

/* membrane_endpoints_fast covers ifindexes below this; larger ones are
 * looked up in the membrane_endpoints hash only. */
#define EP_FAST_SLOTS 65536

/* endpoint_info.flags */
#define EP_ENFORCE_INGRESS 1
#define EP_ENFORCE_EGRESS 2
#define EP_AUDIT 4

/* config.flags */
#define CFG_UNKNOWN_ALLOW 1
/* Benchmarks only: new flows leave no conntrack entry, so BPF_PROG_TEST_RUN
 * with a repeat count measures the new-flow path every time. */
#define CFG_NO_CT_INSERT 2

/* policy_value.flags */
#define POLICY_F_AUDIT 1
#define POLICY_F_DEFAULT 2 /* the synthetic default-deny catch-all entry */

/* policy_value.action */
#define ACTION_ALLOW 0
#define ACTION_DENY 1

/* ct_entry.state */
#define CT_SYN 1
#define CT_ESTABLISHED 2
#define CT_CLOSING 3

/* ct_entry.flags */
#define CT_F_AUDIT 1
#define CT_F_FROM_PROXY 2
#define CT_F_FIN_ORIG 4
#define CT_F_FIN_REPLY 8
#define CT_F_RST 16 /* closing because of a RST, which may not have been taken */
#define CT_F_FOREIGN 32 /* came in through a device that is not its source endpoint's: judged as init (decision 56) */
#define CT_F_FANOUT 64 /* into an endpoint from another's veth, to an address not its own: the sender's egress judges it too (decision 89) */

/* event.type */
#define EVENT_DROP 1
#define EVENT_AUDIT 2
#define EVENT_ALLOW 3
#define EVENT_REDIRECT 4

/* event.flags */
#define EV_F_REVALIDATED 1 /* verdict of an established flow re-judged after a revision change */
#define EV_F_FROM_PROXY 2  /* remote identity taken from skb->mark */
#define EV_F_FRAGMENT 4    /* a later fragment, judged with its first fragment's ports */

/* skb->mark layout for traffic the L7 proxy sends upstream: the top byte is
 * MARK_MAGIC_FROM_PROXY, the low 24 bits the source identity (0: take it from
 * the ipcache), or, for a CIDR identity (FIRST_CIDR_IDENTITY and up, which 24
 * bits cannot hold), MARK_MAGIC_FROM_PROXY_CIDR with the identity less
 * FIRST_CIDR_IDENTITY in the low 24 bits (proxy.FromProxyMark).
 * MARK_MAGIC_TO_PROXY is set on packets redirected to the
 * proxy: the proxy port in the low 16 bits, MARK_TO_PROXY_EGRESS when the
 * redirect was for the container's egress (counters and events only). */
#define MARK_MAGIC_MASK 0xff000000
#define MARK_MAGIC_FROM_PROXY 0xb7000000
#define MARK_MAGIC_FROM_PROXY_CIDR 0xb8000000
#define FIRST_CIDR_IDENTITY 0x01000000
#define MARK_MAGIC_TO_PROXY 0xb6000000
#define MARK_IDENTITY_MASK 0x00ffffff
#define MARK_TO_PROXY_EGRESS 0x00010000
/* The magic (top byte) of the SO_MARK of the proxy's listening sockets and
 * the connections they accept (proxy.MarkProxyListener; a refused one has
 * bit 0 too): the bridge program hands redirected packets to no other
 * socket. The mark takes only CAP_NET_RAW, so with config.proxy_cgroup the
 * socket must also be in the proxy's cgroup. Nothing routes on it. */
#define MARK_PROXY_LISTENER 0xb9000000
#define MARK_PORT_MASK 0x0000ffff

/* Verdict reasons. Values below REASON_FIRST_DROP pass the packet. The Go
 * side names them (reasons.go); keep both lists in step. */
enum reason {
	REASON_ALLOW_POLICY = 0,	/* new flow allowed by a policy entry */
	REASON_ALLOW_DEFAULT = 1,	/* new flow, no entry and no default deny */
	REASON_ALLOW_ESTABLISHED = 2,	/* conntrack hit, original direction */
	REASON_ALLOW_REPLY = 3,		/* conntrack hit, reply direction */
	REASON_ALLOW_RELATED = 4,	/* ICMP error about a tracked flow */
	REASON_ALLOW_NEIGHBOR = 5,	/* ARP, IPv6 neighbour discovery */
	REASON_ALLOW_NOT_ENFORCED = 6,	/* endpoint does not enforce this direction */
	REASON_REDIRECT = 7,		/* allowed with a proxy port (L7) */
	REASON_AUDIT = 8,		/* would have been dropped; audit mode */
	REASON_PROXY_TIMEWAIT = 9,	/* L7 redirect: given to the proxy's socket of the tuple in
					 * TIME_WAIT, a SYN with its SYN flag cleared (bridge program) */
	REASON_DROP_POLICY = 16,	/* a deny entry matched */
	REASON_DROP_DEFAULT_DENY = 17,	/* no allow entry, direction in default deny */
	REASON_DROP_UNKNOWN_ENDPOINT = 18, /* interface not in the endpoints map, unknown verdict drop */
	REASON_DROP_MALFORMED_L3 = 19,	/* truncated or invalid IPv4/IPv6 header */
	REASON_DROP_MALFORMED_L4 = 20,	/* truncated TCP/UDP/SCTP/ICMP header */
	REASON_DROP_EXTHDR = 21,	/* more IPv6 extension headers (or IPv4 AH) than we walk */
	REASON_DROP_FRAG_NO_FLOW = 22,	/* later fragment whose first fragment did not pass here */
	REASON_DROP_UNSUPPORTED_L3 = 23, /* ethertype other than IPv4, IPv6, ARP */
	REASON_DROP_PROXY_NO_LISTENER = 24, /* L7 redirect: no proxy socket on the port (bridge program) */
	REASON_DROP_PROXY_ASSIGN = 25,	/* L7 redirect: bpf_sk_assign failed, not TCP, or a SYN for a
					 * TIME_WAIT socket could not be rewritten (bridge program) */
	REASON_DROP_PROXY_NO_BRIDGE = 26, /* L7 redirect: the endpoint has no bridge to send it through */
	REASON_DROP_SPOOFED_SOURCE = 27, /* an endpoint sent from an address (IP or ARP) of another identity */
	REASON_DROP_PROXY_FOREIGN = 28, /* L7 redirect: the socket on the proxy port is not the proxy's (bridge program) */
	REASON_DROP_NOT_ADDRESSED = 29, /* to an endpoint, a packet addressed to another identity's address */
	REASON_MAX = 30,
};
#define REASON_FIRST_DROP 16
/* Counter slot for ring-buffer records that could not be reserved. */
#define COUNTER_EVENTS_LOST (REASON_MAX * 2)
#define COUNTER_SLOTS (REASON_MAX * 2 + 1)

struct endpoint_info {
	__u32 endpoint_id;
	__u32 identity;
	__u32 flags;
	__u32 present; /* 1: the slot holds an endpoint (array slots start zeroed) */
	__u32 bridge_ifindex; /* the bridge the veth is a port of: L7 redirects go to its ingress; 0 none */
	__u32 pad;
};

/* LPM key: prefixlen counts family (8) + pad (24) + address bits. */
struct ipcache_key {
	__u32 prefixlen;
	__u8 family; /* 4 or 6 */
	__u8 pad[3];
	__u8 addr[16]; /* IPv4 in the first 4 bytes */
};

struct ipcache_value {
	__u32 identity;
	__u32 flags;
};

/* LPM key of the per-identity policy map. prefixlen covers identity (32) +
 * direction (8) always, protocol (8) unless the entry is for every protocol,
 * then the fixed leading bits of the port. identity and port are in network
 * byte order so that a port range is a bit prefix. ICMP types go in port. */
struct policy_key {
	__u32 prefixlen;
	__u32 identity; /* remote identity, network order; 0 = any */
	__u8 direction;
	__u8 protocol;
	__u16 port; /* network order */
};

/* Key of membrane_policy_exact: a cache of the full-length entries (exact
 * remote identity, protocol and port) of every identity's trie, all host
 * byte order. */
struct policy_exact_key {
	__u32 local;  /* local identity */
	__u32 remote; /* remote identity, never 0 */
	__u8 direction;
	__u8 protocol;
	__u16 port; /* dport, or ICMP type */
};

struct policy_value {
	__u32 rule_id;
	__u16 proxy_port; /* host order; 0 = none */
	__u8 action;	  /* ACTION_ALLOW / ACTION_DENY */
	__u8 flags;	  /* POLICY_F_* */
};

struct ct_key {
	__u8 saddr[16];
	__u8 daddr[16];
	__u16 sport; /* network order; ICMP echo: the identifier in both */
	__u16 dport;
	__u8 protocol;
	__u8 family;
	__u16 pad;
	__u32 ifindex; /* host-side veth: each end keeps its own state */
};

struct ct_entry {
	__u64 expires; /* bpf_ktime_get_ns() deadline */
	__u64 packets; /* of the first packet only: the entry is not */
	__u64 bytes;   /* written per packet (see datapath.c) */
	__u32 revision;	      /* policy revision the flow was last judged under */
	__u32 rule_id;	      /* entry that admitted it */
	__u32 remote_identity; /* at admission (from-proxy flows keep it) */
	__u16 proxy_port;
	__u16 policy_port; /* host order: dport or ICMP type used for the verdict */
	__u8 direction;	   /* direction of the packet that created it */
	__u8 state;	   /* CT_* */
	__u8 flags;	   /* CT_F_* */
	__u8 pad[5];
};

struct frag_key {
	__u8 saddr[16];
	__u8 daddr[16];
	__u32 id;
	__u8 protocol; /* 0: the protocol is the first fragment's, in the value */
	__u8 family;
	__u8 direction; /* DIR_* at the interface */
	__u8 pad;
	__u32 ifindex;
};

struct frag_value {
	__u16 sport;
	__u16 dport;
	__u16 policy_port;
	__u8 protocol; /* the first fragment's transport protocol */
	__u8 pad;
};

struct config {
	__u32 abi;
	__u32 revision;
	__u32 flags;	    /* CFG_* */
	__u32 allow_sample; /* 0: no allow records; N: one new allowed flow in N */
	__u32 lifetime_tcp; /* seconds, established TCP */
	__u32 lifetime_syn;
	__u32 lifetime_nontcp;
	__u32 lifetime_close;
	/* cgroup v2 id of the proxy's upstream sockets (Config.ProxyCgroup);
	 * 0: not checked. A from-proxy mark on a packet whose socket is in
	 * another cgroup (or that has none: forwarded) is not taken: SO_MARK
	 * takes only CAP_NET_RAW (Linux 5.17 and later), which a --network
	 * host container has by default. */
	__u64 proxy_cgroup;
};

struct counter {
	__u64 packets;
	__u64 bytes;
};

struct event {
	__u64 timestamp;
	__u32 ifindex;
	__u32 endpoint_id;
	__u32 local_identity;
	__u32 remote_identity;
	__u32 rule_id;
	__u32 len;
	__u16 sport; /* host order */
	__u16 dport;
	__u16 proxy_port;
	__u8 type;
	__u8 reason;
	__u8 direction;
	__u8 protocol;
	__u8 family;
	__u8 flags;
	__u8 saddr[16];
	__u8 daddr[16];
};

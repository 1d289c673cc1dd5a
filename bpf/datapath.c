//go:build ignore

/* Membrane's container programs. membrane_egress runs at tc ingress of a
 * container's host-side veth (what the container sends), membrane_ingress at
 * tc egress of the same veth (what the container receives). Both share every
 * map. The lookup order is the contract in policies/model.go. */

#include "membrane.h"
#include "packet.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* How many IPv6 extension headers we walk before giving up (drop). */
#define MAX_EXT_HEADERS 8
#define MAX_IPV4_AUTH_HEADERS 2

#define NSEC 1000000000ULL

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32); /* host-side veth ifindex */
	__type(value, struct endpoint_info);
	__uint(max_entries, 1024);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} membrane_endpoints SEC(".maps");

/* The same endpoints as an array indexed by ifindex (below EP_FAST_SLOTS):
 * the verifier inlines an array lookup into a bounds check and an add, where
 * a hash lookup is a call, a jhash and a bucket walk on every packet. The
 * writer fills both; the hash stays the list of endpoints and covers the rare
 * large ifindex. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct endpoint_info);
	__uint(max_entries, EP_FAST_SLOTS);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} membrane_endpoints_fast SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct ipcache_key);
	__type(value, struct ipcache_value);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} membrane_ipcache SEC(".maps");

/* Full-length ipcache entries (endpoint and host addresses), keyed like the
 * LPM trie with prefixlen 64 or 160: one hash lookup instead of a trie walk
 * for the peers that matter most; the trie holds the shorter prefixes. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct ipcache_key);
	__type(value, struct ipcache_value);
	__uint(max_entries, 16384);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} membrane_ipcache_exact SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH_OF_MAPS);
	__type(key, __u32); /* local identity */
	__uint(max_entries, 4096);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	/* one LPM trie per local identity, swapped whole by the writer */
	__array(values, struct {
		__uint(type, BPF_MAP_TYPE_LPM_TRIE);
		__type(key, struct policy_key);
		__type(value, struct policy_value);
		__uint(max_entries, 16384);
		__uint(map_flags, BPF_F_NO_PREALLOC);
	});
} membrane_policy SEC(".maps");

/* The full-length entries (exact remote, protocol, port) of every local
 * identity's trie, in one hash: one lookup answers the common first packet
 * with no outer lookup and no trie walk, however many entries the identity
 * has. A full-length entry is the longest match the trie can return for its
 * key, and every entry is in the trie too, so a hit here is the trie's
 * answer and a miss just falls through to the trie; the writer may leave
 * entries out (a full map) but never keeps one the trie no longer has. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct policy_exact_key);
	__type(value, struct policy_value);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} membrane_policy_exact SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ct_key);
	__type(value, struct ct_entry);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} membrane_ct SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct frag_key);
	__type(value, struct frag_value);
	__uint(max_entries, 8192);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} membrane_frag SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct config);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} membrane_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32); /* reason * 2 + direction */
	__type(value, struct counter);
	__uint(max_entries, COUNTER_SLOTS);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} membrane_counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} membrane_events SEC(".maps");

/* The flow cache: per CPU, direct-mapped, FLOW_CACHE_SLOTS slots of one
 * cache line, in front of membrane_ct for the packets of known flows. Every
 * kernel function call costs a return through the SRSO mitigation's safe
 * RET on the CPUs this runs on (~18 ns each, see BenchmarkVerdict), and a
 * conntrack hit is two of them (the hash lookup and its memcmp); an array
 * lookup is inlined by the verifier, so a slot hit makes no call at all.
 *
 * A slot is a copy of what the conntrack path decided for one packet tuple
 * (on one interface, in one direction) that needs nothing but a pass: it is
 * used only while the policy revision, the local identity and the flow
 * generation (membrane_flow_gen, moved on by userspace when it deletes
 * conntrack entries, changes an endpoint or the verdict for unknown ones,
 * plus membrane_flow_gen_dp, moved on by the programs in flow_cache_follow,
 * plus the close generation of the slot's index, membrane_flow_close, moved
 * on by flow_cache_close when conntrack records a FIN or RST new to an
 * entry of the tuple or of its reverse)
 * are those it was filled under and its deadline is
 * ahead, and never for TCP packets with SYN, FIN or RST, which take the
 * conntrack path for their state changes. The deadline is a few jiffies ahead (FLOW_CACHE_AHEAD_JIFFIES, less
 * than the shortest lifetime) and the conntrack path that fills the slot
 * also refreshes the entry, so a flow active on this CPU still refreshes
 * its entry several times a second and the slot never outlives it. Unpinned: a new program starts with an empty cache. */
#define FLOW_CACHE_BITS 12
#define FLOW_CACHE_SLOTS (1 << FLOW_CACHE_BITS)
/* How long a slot stays usable, in jiffies: 64 ms to 640 ms for HZ 1000 to
 * 100, under the shortest conntrack lifetime (1 s), so a slot never outlives
 * its entry. */
#define FLOW_CACHE_AHEAD_JIFFIES 64

/* flow_slot and same_tuple read a tuple as 11 words. */
_Static_assert(sizeof(struct ct_key) == 44, "ct_key is 11 32-bit words");

struct flow_slot {
	struct ct_key key;
	__u32 local; /* local identity */
	__u64 tag;   /* policy revision | (flow generations + the index's close generation) << 32 */
	__u64 until; /* jiffies */
	__u8 dir;
	__u8 reply;
	__u8 pad[6];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct flow_slot);
	__uint(max_entries, FLOW_CACHE_SLOTS);
} membrane_flow_cache SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} membrane_flow_gen SEC(".maps");

/* The programs' own flow generation, added to membrane_flow_gen in a flow
 * cache slot's tag: moved on (atomically; userspace never writes it) when a
 * new flow makes a tuple's packets go to the L7 proxy while a slot may still
 * pass them as another flow's (see handle). A counter of its own, because
 * userspace moves membrane_flow_gen on by reading and writing it, which
 * could undo an increment made in between. Unpinned, like the flow cache. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 1);
} membrane_flow_gen_dp SEC(".maps");

/* Close generations, one per flow cache slot index, shared by every CPU:
 * moved on (atomically) by flow_cache_close when conntrack records a FIN or
 * RST that an entry did not have, at the indexes of the entry's tuple and
 * of its reverse, and added to the flow generations in a slot's tag. So a
 * close makes stale, on every CPU, the slots of that flow (and those that
 * share its indexes), not the whole cache. Written only on a close, so the
 * line a hit reads stays shared in the CPUs' caches. Unpinned, like the
 * flow cache. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, FLOW_CACHE_SLOTS);
} membrane_flow_close SEC(".maps");

/* Inline tables: set-associative copies of the IPv4 entries of
 * membrane_ipcache_exact and of membrane_policy_exact in plain arrays, so
 * that the first packet of a flow finds its peer's identity and its policy
 * entry with no kernel call (see the flow cache above for why that matters).
 * Userspace is their only writer and writes them through a shared mapping
 * (BPF_F_MMAPABLE) with single atomic stores (ipcache4: one 64-bit word per
 * entry) or a sequence count (policy4: odd while a slot changes; a reader
 * that sees it odd or moved takes the maps instead). A slot is written only
 * after its entry is in the hash map and cleared before the entry leaves it,
 * so a hit is always what the hash would answer; a miss (a full set, IPv6)
 * just falls through to the maps. The reader's ordering relies on x86-64's
 * (TSO): loads are not reordered with loads; the Go writer fills the tables
 * only on amd64. */
#define INLINE_WAYS 4
#define IPC4_SET_BITS 12
#define POL4_SET_BITS 14

struct ipc4_set {
	__u64 slot[INLINE_WAYS]; /* address (as loaded from the packet) << 32 | identity; 0 empty */
};

struct pol4_slot {
	__u32 seq;
	__u32 local;
	__u32 remote; /* 0: empty (an exact entry's remote is never 0) */
	__u32 key;    /* direction | protocol << 8 | port << 16, host order */
	__u32 rule_id;
	__u32 value; /* proxy_port | action << 16 | flags << 24 */
};

struct pol4_set {
	struct pol4_slot slot[INLINE_WAYS];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct ipc4_set);
	__uint(max_entries, 1 << IPC4_SET_BITS);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} membrane_ipcache4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct pol4_set);
	__uint(max_entries, 1 << POL4_SET_BITS);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} membrane_policy4 SEC(".maps");

/* The set of an IPv4 address (as a native-order load of its 4 bytes) and of
 * a policy key; bpf/inline.go computes the same. */
static __always_inline __u32 ipc4_set_of(__u32 addr)
{
	return (__u32)(addr * 0x9e3779b1u) >> (32 - IPC4_SET_BITS);
}

static __always_inline __u32 pol4_set_of(__u32 local, __u32 remote, __u32 key)
{
	__u32 h = local * 0x9e3779b1u + remote * 0x85ebca77u + key * 0xc2b2ae3du;
	return h >> (32 - POL4_SET_BITS);
}

/* Per-CPU memo of the coarse clock for the current jiffy (see now_ns). */
struct clock_memo {
	__u64 jiffies;
	__u64 ns;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct clock_memo);
	__uint(max_entries, 1);
} membrane_clock SEC(".maps");

/* Force BTF for the types only userspace uses. */
const struct event *unused_event __attribute__((unused));
const struct ipcache_key *unused_ipcache_key __attribute__((unused));
const struct policy_key *unused_policy_key __attribute__((unused));
const struct policy_value *unused_policy_value __attribute__((unused));
const struct policy_exact_key *unused_policy_exact_key __attribute__((unused));
const struct frag_key *unused_frag_key __attribute__((unused));

/* What the parser learnt about one packet. */
struct pkt {
	struct ct_key tuple; /* as the packet travels; ifindex filled in later */
	__u32 frag_id;
	__u32 inner_off; /* ICMP errors: where the packet they quote starts */
	__u32 nd_target_off; /* neighbour advertisements: where the target address is; 0 none */
	__u16 policy_port; /* host order: dport, or ICMP type */
	__u8 tcp_flags;
	__u8 tcp_data; /* TCP: the segment carries data */
	__u8 icmp_error;
	__u8 first_frag;
	__u8 later_frag;
	__u8 neighbor;
	__u8 hop_limit; /* IPv6 */
};

struct verdict {
	__u32 rule_id;
	__u32 remote;
	__u16 proxy_port;
	__u8 reason;
	__u8 audit;
};

static __always_inline struct endpoint_info *endpoint(__u32 ifindex)
{
	if (ifindex < EP_FAST_SLOTS) {
		struct endpoint_info *ep = bpf_map_lookup_elem(&membrane_endpoints_fast, &ifindex);
		return ep && ep->present ? ep : 0;
	}
	return bpf_map_lookup_elem(&membrane_endpoints, &ifindex);
}

static __always_inline void count(__u8 reason, __u8 dir, __u32 len)
{
	__u32 slot = (__u32)reason * 2 + dir;
	struct counter *c = bpf_map_lookup_elem(&membrane_counters, &slot);
	if (c) {
		c->packets++;
		c->bytes += len;
	}
}

static __always_inline void emit(struct __sk_buff *skb, struct pkt *p, __u8 type, __u8 reason,
				 __u8 dir, __u8 flags, const struct endpoint_info *ep, __u32 local,
				 const struct verdict *v)
{
	struct event *e = event_reserve(&membrane_events, &membrane_counters);
	if (!e)
		return;
	e->timestamp = bpf_ktime_get_coarse_ns();
	e->ifindex = skb->ifindex;
	e->endpoint_id = ep ? ep->endpoint_id : 0;
	e->local_identity = local;
	e->remote_identity = v ? v->remote : 0;
	e->rule_id = v ? v->rule_id : 0;
	e->len = skb->len;
	e->sport = bpf_ntohs(p->tuple.sport);
	e->dport = bpf_ntohs(p->tuple.dport);
	/* ICMP other than echo keeps its type in the tuple's ports (see
	 * load_ports); a record shows none, as before. Echo's are equal. */
	if ((p->tuple.protocol == IPPROTO_ICMP || p->tuple.protocol == IPPROTO_ICMPV6) &&
	    p->tuple.sport != p->tuple.dport)
		e->sport = e->dport = 0;
	e->proxy_port = v ? v->proxy_port : 0;
	e->type = type;
	e->reason = reason;
	e->direction = dir;
	e->protocol = p->tuple.protocol;
	e->family = p->tuple.family;
	e->flags = flags;
	__builtin_memcpy(e->saddr, p->tuple.saddr, 16);
	__builtin_memcpy(e->daddr, p->tuple.daddr, 16);
	bpf_ringbuf_submit(e, 0);
}

/* Copy len bytes at off: straight from the linear packet data when it is
 * there (the common case, and much cheaper than a helper call), else through
 * bpf_skb_load_bytes, which also reads paged data. */
static __always_inline int load(struct __sk_buff *skb, __u32 off, void *to, const __u32 len)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;

	if (off < 512) {
		void *p = data + off;
		if (p + len <= data_end) {
			/* Word loads, not byte loads: headers sit at 2-byte
			 * offsets from an aligned start, and x86/arm64 (where the
			 * verifier does not insist on alignment) load unaligned
			 * words at full speed. to is 4-byte aligned. */
			__builtin_memcpy(__builtin_assume_aligned(to, 4), __builtin_assume_aligned(p, 4), len);
			return 0;
		}
	}
	return bpf_skb_load_bytes(skb, off, to, len);
}

/* Coarse monotonic time: a tick's resolution is plenty for lifetimes of
 * seconds, and it reads no clock source (rdtsc is costly in many VMs). The
 * coarse clock only moves when jiffies do, so it is read once per jiffy and
 * CPU: bpf_jiffies64 and the per-CPU array lookup are inlined by the
 * verifier (64-bit JIT), where bpf_ktime_get_coarse_ns is a helper call,
 * about 20 ns a packet on a kernel with retpolines. A CPU that reads the
 * new jiffy before the tick has moved the coarse clock keeps the previous
 * tick's time for that jiffy: at most one tick behind, the clock's own
 * resolution. */
static __always_inline __u64 now_ns(void)
{
	__u32 zero = 0;
	__u64 j = bpf_jiffies64();
	struct clock_memo *m = bpf_map_lookup_elem(&membrane_clock, &zero);
	if (m && m->jiffies == j && m->ns)
		return m->ns;
	__u64 ns = bpf_ktime_get_coarse_ns();
	if (m) {
		m->jiffies = j;
		m->ns = ns;
	}
	return ns;
}

/* The slot index of a tuple's folded words: the top bits of a sum of
 * 32-bit multiplicative hashes, which run side by side. A collision only
 * costs the conntrack path. */
static __always_inline __u32 flow_index_at(__u32 a, __u32 b, __u32 ports, __u32 rest)
{
	__u32 h = a * 0x9e3779b1u + b * 0x85ebca77u + (ports ^ rest) * 0xc2b2ae3du;
	return h >> (32 - FLOW_CACHE_BITS);
}

/* The slot index of a tuple: each address folded to a word. An IPv4
 * tuple's address words past the first are zero (struct pkt starts
 * zeroed). */
static __always_inline __u32 flow_index(const struct ct_key *k)
{
	const __u32 *w = (const __u32 *)k;
	if (k->family == 4)
		return flow_index_at(w[0], w[4], w[8], w[9] ^ w[10]);
	return flow_index_at(w[0] ^ w[1] ^ w[2] ^ w[3], w[4] ^ w[5] ^ w[6] ^ w[7], w[8], w[9] ^ w[10]);
}

/* Whether a slot's key is the tuple k. Word 9 holds the family: an IPv4 key
 * only ever matches an IPv4 tuple, whose other address words are zero in
 * both. */
static __always_inline int same_tuple(const struct ct_key *slot, const struct ct_key *k)
{
	const __u32 *x = (const __u32 *)slot, *y = (const __u32 *)k;
	__u32 diff = (x[0] ^ y[0]) | (x[4] ^ y[4]) | (x[8] ^ y[8]) | (x[9] ^ y[9]) | (x[10] ^ y[10]);
	if (k->family != 4)
		diff |= (x[1] ^ y[1]) | (x[2] ^ y[2]) | (x[3] ^ y[3]) | (x[5] ^ y[5]) | (x[6] ^ y[6]) |
			(x[7] ^ y[7]);
	return diff == 0;
}

/* Whether two addresses as struct ct_key holds them (IPv4: the first word,
 * the rest zero) are the same. */
static __always_inline int same_addr(const __u8 *x, const __u8 *y)
{
	const __u32 *a = (const __u32 *)x, *b = (const __u32 *)y;
	return ((a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3])) == 0;
}

static __always_inline int is_icmp_error(__u8 proto, __u8 type)
{
	if (proto == IPPROTO_ICMP)
		return type == 3 || type == 11 || type == 12;
	return type >= 1 && type <= 4;
}

/* Ports of a transport header at off; the ICMP echo identifier stands in
 * for both ports of an echo flow. Returns <0 when truncated: the header
 * must end by end, the end of its IP datagram (what follows in the frame is
 * padding, which IP cuts off). quoted (a
 * constant): the header is one an ICMP error quotes, of which only the
 * first 8 bytes are sure to be there (RFC 792; many routers quote no
 * more): TCP, UDP and SCTP need just their ports, and ICMP its 8 bytes. */
static __always_inline int load_ports(struct __sk_buff *skb, __u32 off, __u8 proto, struct ct_key *k,
				      __u16 *policy_port, __u8 *tcp_flags, __u8 *tcp_data, __u32 end, const int quoted)
{
	__u8 buf[16] __attribute__((aligned(4)));

	switch (proto) {
	case IPPROTO_TCP:
		if (quoted) {
			if (load(skb, off, buf, 4) < 0)
				return -1;
			break;
		}
		/* the fixed 20-byte header must be there */
		if (off + 20 > end || load(skb, off, buf, 14) < 0)
			return -1;
		*tcp_flags = buf[13];
		/* a payload after the header (and its options) */
		*tcp_data = off + (__u32)(buf[12] >> 4) * 4 < end;
		break;
	case IPPROTO_UDP:
		if ((!quoted && off + 8 > end) || load(skb, off, buf, quoted ? 4 : 8) < 0)
			return -1;
		break;
	case IPPROTO_SCTP:
		if ((!quoted && off + 12 > end) || load(skb, off, buf, quoted ? 4 : 12) < 0)
			return -1;
		break;
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6: {
		if ((!quoted && off + 8 > end) || load(skb, off, buf, 8) < 0)
			return -1;
		__u8 type = buf[0];
		*policy_port = type;
		if ((proto == IPPROTO_ICMP && (type == 0 || type == 8)) ||
		    (proto == IPPROTO_ICMPV6 && (type == 128 || type == 129))) {
			__builtin_memcpy(&k->sport, &buf[4], 2);
			k->dport = k->sport;
			return 0;
		}
		/* Every other type is a flow of its own: with the same ports
		 * for all, one type that a policy admits (or one that passes as
		 * related) would make any other type between the same two
		 * addresses an established packet or a reply. The type goes in
		 * sport; the reply of a request/reply pair (timestamp,
		 * information, address mask; ICMPv6 node information) puts its
		 * request's type in dport, so that it is the request's reply. */
		__u8 req = 0;
		if (proto == IPPROTO_ICMP && (type == 14 || type == 16 || type == 18))
			req = type - 1;
		else if (proto == IPPROTO_ICMPV6 && type == 140)
			req = 139;
		if (req)
			k->dport = bpf_htons(req);
		else
			k->sport = bpf_htons(type);
		return 0;
	}
	default:
		return 0;
	}
	__builtin_memcpy(&k->sport, &buf[0], 2);
	__builtin_memcpy(&k->dport, &buf[2], 2);
	*policy_port = bpf_ntohs(k->dport);
	return 0;
}

/* How many IPv6 extension headers of a quoted packet we walk. */
#define MAX_INNER_EXT_HEADERS 4

/* The tuple of the packet quoted by an ICMP error (k zeroed), for the
 * related-flow lookup; read only when it is needed, so that struct pkt
 * stays small (the hot path zeroes it). The quote is what the sender of the
 * error had: IPv4 options and IPv6 extension headers (hop-by-hop, routing,
 * destination options, authentication, a first fragment's fragment header)
 * and IPv4 authentication headers come before the ports. A later fragment's quote shows no ports. Failure
 * (<0) just means "not related": the error is then judged as plain ICMP. */
static __always_inline int load_inner(struct __sk_buff *skb, __u32 off, const struct pkt *p, struct ct_key *k)
{
	__u16 pp = 0;
	__u8 fl = 0;
	__u8 proto;

	if (p->tuple.family == 4) {
		struct ipv4hdr ip;
		if (load(skb, off, &ip, sizeof(ip)) < 0)
			return -1;
		__u32 ihl = (ip.ver_ihl & 0x0f) * 4;
		if (ihl < 20 || (ip.frag_off & bpf_htons(0x1fff)))
			return -1;
		proto = ip.protocol;
		__builtin_memcpy(k->saddr, &ip.saddr, 4);
		__builtin_memcpy(k->daddr, &ip.daddr, 4);
		off += ihl;
		int i;
#pragma unroll
		for (i = 0; i < MAX_IPV4_AUTH_HEADERS; i++) {
			__u8 h[2];
			if (proto != IPPROTO_AH)
				break;
			if (bpf_skb_load_bytes(skb, off, h, 2) < 0)
				return -1;
			off += ((__u32)h[1] + 2) * 4;
			proto = h[0];
		}
	} else {
		struct ipv6hdr ip6;
		if (load(skb, off, &ip6, sizeof(ip6)) < 0)
			return -1;
		proto = ip6.nexthdr;
		__builtin_memcpy(k->saddr, ip6.saddr, 16);
		__builtin_memcpy(k->daddr, ip6.daddr, 16);
		off += sizeof(ip6);
		int i;
#pragma unroll
		for (i = 0; i < MAX_INNER_EXT_HEADERS; i++) {
			__u8 h[4];
			if (proto != NEXTHDR_HOP && proto != NEXTHDR_ROUTING && proto != NEXTHDR_FRAGMENT &&
			    proto != NEXTHDR_AUTH && proto != NEXTHDR_DEST)
				break;
			if (bpf_skb_load_bytes(skb, off, h, 4) < 0)
				return -1;
			if (proto == NEXTHDR_FRAGMENT) {
				if ((h[2] << 8 | h[3]) & 0xfff8)
					return -1;
				off += 8;
			} else if (proto == NEXTHDR_AUTH) {
				off += ((__u32)h[1] + 2) * 4;
			} else {
				off += ((__u32)h[1] + 1) * 8;
			}
			proto = h[0];
		}
	}
	k->protocol = proto;
	k->family = p->tuple.family;
	return load_ports(skb, off, proto, k, &pp, &fl, &fl, skb->len, 1);
}

/* Returns 0 or a drop reason. */
static __always_inline int parse(struct __sk_buff *skb, struct pkt *p)
{
	__u32 off = ETH_HLEN;
	__u32 end; /* where the IP datagram ends */
	__u8 proto;

	/* The common packet first, read in place: IPv4 without options, not a
	 * fragment, TCP with its fixed header in the linear data and a total
	 * length the skb holds. Anything else (and anything malformed) takes
	 * the general parser below, which judges it the same way. */
	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		void *data = (void *)(long)skb->data;
		void *data_end = (void *)(long)skb->data_end;
		struct ipv4hdr *iph = data + ETH_HLEN;
		__u8 *th = (__u8 *)(iph + 1);
		if ((void *)(th + 20) <= data_end && *(__u16 *)(data + 12) == bpf_htons(ETH_P_IP) &&
		    iph->ver_ihl == 0x45 && iph->protocol == IPPROTO_TCP && !(iph->frag_off & bpf_htons(0x3fff))) {
			__u32 tot = bpf_ntohs(iph->tot_len);
			if (tot == 0 && skb->gso_size)
				tot = skb->len - ETH_HLEN; /* IPv4 BIG TCP */
			if (tot >= 40 && ETH_HLEN + tot <= skb->len) {
				p->tuple.family = 4;
				__builtin_memcpy(p->tuple.saddr, &iph->saddr, 4);
				__builtin_memcpy(p->tuple.daddr, &iph->daddr, 4);
				p->tuple.protocol = IPPROTO_TCP;
				p->frag_id = iph->id;
				__builtin_memcpy(&p->tuple.sport, th, 2);
				__builtin_memcpy(&p->tuple.dport, th + 2, 2);
				p->policy_port = bpf_ntohs(p->tuple.dport);
				p->tcp_flags = th[13];
				p->tcp_data = tot > 20 + (__u32)(th[12] >> 4) * 4;
				return 0;
			}
		}
	}
	/* The receiver goes by the frame's own ethertype (eth_type_trans);
	 * skb->protocol is the sender's word for it, and a packet socket in
	 * the host's namespace may give any (sll_protocol): an IPv4 packet
	 * sent to an endpoint as "ARP" would pass as ARP. They must agree. */
	if (skb->protocol == bpf_htons(ETH_P_IP) || skb->protocol == bpf_htons(ETH_P_IPV6) ||
	    skb->protocol == bpf_htons(ETH_P_ARP)) {
		__u16 eth_proto __attribute__((aligned(4)));
		if (load(skb, 12, &eth_proto, 2) < 0 || eth_proto != skb->protocol)
			return REASON_DROP_MALFORMED_L3;
	}
	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct ipv4hdr ip;
		if (load(skb, off, &ip, sizeof(ip)) < 0)
			return REASON_DROP_MALFORMED_L3;
		__u32 ihl = (ip.ver_ihl & 0x0f) * 4;
		__u32 tot = bpf_ntohs(ip.tot_len);
		if (tot == 0 && skb->gso_size)
			tot = skb->len - off; /* IPv4 BIG TCP: the length lives in the skb */
		if ((ip.ver_ihl >> 4) != 4 || ihl < 20 || tot < ihl || off + tot > skb->len)
			return REASON_DROP_MALFORMED_L3;
		end = off + tot;
		p->tuple.family = 4;
		__builtin_memcpy(p->tuple.saddr, &ip.saddr, 4);
		__builtin_memcpy(p->tuple.daddr, &ip.daddr, 4);
		proto = ip.protocol;
		__u16 frag = bpf_ntohs(ip.frag_off);
		if (frag & 0x1fff)
			p->later_frag = 1;
		else if (frag & 0x2000)
			p->first_frag = 1;
		p->frag_id = ip.id;
		off += ihl;
		/* An authentication header (RFC 4302) is looked through as in
		 * IPv6: the policy judges what it carries. Its length is in
		 * 4-byte units, less 2. A later fragment has none. */
		if (!p->later_frag) {
			int i;
#pragma unroll
			for (i = 0; i < MAX_IPV4_AUTH_HEADERS; i++) {
				__u8 h[2];
				if (proto != IPPROTO_AH)
					break;
				if (off + 8 > end || bpf_skb_load_bytes(skb, off, h, 2) < 0)
					return REASON_DROP_MALFORMED_L3;
				off += ((__u32)h[1] + 2) * 4;
				proto = h[0];
			}
			if (proto == IPPROTO_AH)
				return REASON_DROP_EXTHDR;
		}
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6;
		if (load(skb, off, &ip6, sizeof(ip6)) < 0)
			return REASON_DROP_MALFORMED_L3;
		__u32 plen = bpf_ntohs(ip6.payload_len);
		if ((bpf_ntohl(ip6.vtc_flow) >> 28) != 6 || off + sizeof(ip6) + plen > skb->len)
			return REASON_DROP_MALFORMED_L3;
		/* 0 is a jumbogram's (a hop-by-hop header follows) or a BIG TCP
		 * packet's (GSO): its length is the skb's. Else IP takes it at
		 * its word and cuts the rest off. */
		end = off + sizeof(ip6) + plen;
		if (!plen && (ip6.nexthdr == NEXTHDR_HOP || skb->gso_size))
			end = skb->len;
		/* An IPv4-mapped source (::ffff:a.b.c.d) never appears on the
		 * wire (RFC 4291 2.5.5.2). It would have the IPv4 address's
		 * identity (ipcache_identity): a world sender could pass for an
		 * endpoint; judged as world instead, it would slip past a rule
		 * denying that IPv4 address. Neither: it is malformed. */
		const __u32 *sw = (const __u32 *)ip6.saddr;
		if ((sw[0] | sw[1]) == 0 && sw[2] == bpf_htonl(0x0000ffff))
			return REASON_DROP_MALFORMED_L3;
		p->tuple.family = 6;
		p->hop_limit = ip6.hop_limit;
		__builtin_memcpy(p->tuple.saddr, ip6.saddr, 16);
		__builtin_memcpy(p->tuple.daddr, ip6.daddr, 16);
		proto = ip6.nexthdr;
		off += sizeof(ip6);
		int i;
#pragma unroll
		for (i = 0; i < MAX_EXT_HEADERS; i++) {
			__u8 h[8];
			if (proto != NEXTHDR_HOP && proto != NEXTHDR_ROUTING && proto != NEXTHDR_FRAGMENT &&
			    proto != NEXTHDR_AUTH && proto != NEXTHDR_DEST)
				break;
			if (off + 8 > end || bpf_skb_load_bytes(skb, off, h, 8) < 0)
				return REASON_DROP_MALFORMED_L3;
			if (proto == NEXTHDR_FRAGMENT) {
				__u16 fo = ((__u16)h[2] << 8) | h[3];
				__builtin_memcpy(&p->frag_id, &h[4], 4);
				off += 8;
				if (fo & 0xfff8) {
					/* What follows a later fragment's header is
					 * data, not headers: stop there (no next
					 * header); its protocol is the first
					 * fragment's (handle). */
					p->later_frag = 1;
					h[0] = NEXTHDR_NONE;
				} else if (fo & 1) {
					p->first_frag = 1;
				}
			} else if (proto == NEXTHDR_AUTH) {
				off += ((__u32)h[1] + 2) * 4;
			} else {
				off += ((__u32)h[1] + 1) * 8;
			}
			proto = h[0];
		}
		if (proto == NEXTHDR_HOP || proto == NEXTHDR_ROUTING || proto == NEXTHDR_FRAGMENT ||
		    proto == NEXTHDR_AUTH || proto == NEXTHDR_DEST)
			return REASON_DROP_EXTHDR;
	} else if (skb->protocol == bpf_htons(ETH_P_ARP)) {
		p->neighbor = 1;
		return 0;
	} else {
		return REASON_DROP_UNSUPPORTED_L3;
	}

	p->tuple.protocol = proto;
	if (p->later_frag)
		return 0;
	if (load_ports(skb, off, proto, &p->tuple, &p->policy_port, &p->tcp_flags, &p->tcp_data, end, 0) < 0)
		return REASON_DROP_MALFORMED_L4;
	/* ND and MLD are ICMPv6 in IPv6: an IPv4 packet with protocol 58 is
	 * judged as any other protocol. */
	int icmp6 = proto == IPPROTO_ICMPV6 && p->tuple.family == 6;
	if (icmp6 && p->policy_port >= 133 && p->policy_port <= 137) {
		p->neighbor = 1; /* router/neighbour solicitation/advertisement, redirect */
		if (p->policy_port == 136)
			p->nd_target_off = off + 8; /* after type, code, checksum and flags */
		return 0;
	}
	if (icmp6 && (p->policy_port == 130 || p->policy_port == 131 || p->policy_port == 132 || p->policy_port == 143)) {
		p->neighbor = 1; /* multicast listener discovery: MLDv1 query/report/done, MLDv2 report */
		return 0;
	}
	if ((proto == IPPROTO_ICMP && p->tuple.family == 4) || icmp6) {
		if (is_icmp_error(proto, (__u8)p->policy_port)) {
			p->icmp_error = 1;
			p->inner_off = off + 8;
		}
	}
	return 0;
}

/* remote, the identity of the source address of a packet coming into
 * endpoint ep, as the packet's way in lets it stand. A packet from a local
 * endpoint's address came through that endpoint's veth, where its program
 * checked the address was its own (spoofed), and the bridge forwarded it
 * here; or the host routed it here from that bridge (a hairpin through a
 * published port), and it comes in from the bridge itself. One that came
 * through any other device (a bridge port that is no endpoint's: the veth
 * of a container started while the daemon was down, which Docker gave the
 * address of a container removed meanwhile, or a device enslaved to the
 * bridge; or the host's uplink) is not that endpoint's: it is judged as
 * init, as a container the daemon does not know yet (decision 56). The
 * host's own packets have no way in (ingress_ifindex 0). */
static __always_inline __u32 arrived_from(const struct __sk_buff *skb, const struct endpoint_info *ep, __u32 remote)
{
	if (remote < FIRST_LOCAL_IDENTITY || remote >= FIRST_CIDR_IDENTITY)
		return remote;
	__u32 in = skb->ingress_ifindex;
	if (!in || !ep || in == ep->bridge_ifindex || in == skb->ifindex || endpoint(in))
		return remote;
	return IDENTITY_INIT;
}

/* The identity of an address. An IPv4-mapped IPv6 address (::ffff:a.b.c.d)
 * has its IPv4 address's (policy decision 27; the writer unmaps prefixes):
 * a destination only, since parse drops a packet with a mapped source. */
static __always_inline __u32 ipcache_identity(__u8 family, const __u8 *addr)
{
	if (family == 6) {
		const __u32 *w = (const __u32 *)addr;
		if ((w[0] | w[1]) == 0 && w[2] == bpf_htonl(0x0000ffff)) {
			family = 4;
			addr += 12;
		}
	}
	if (family == 4) {
		__u32 a = *(const __u32 *)addr;
		__u32 idx = ipc4_set_of(a);
		struct ipc4_set *set = a ? bpf_map_lookup_elem(&membrane_ipcache4, &idx) : 0;
		if (set) {
			int i;
#pragma unroll
			for (i = 0; i < INLINE_WAYS; i++) {
				__u64 v = *(volatile __u64 *)&set->slot[i];
				if ((__u32)(v >> 32) == a)
					return (__u32)v;
			}
		}
	}
	struct ipcache_key k = {};
	k.family = family;
	if (family == 4) {
		k.prefixlen = 32 + 32;
		__builtin_memcpy(k.addr, addr, 4);
	} else {
		k.prefixlen = 32 + 128;
		__builtin_memcpy(k.addr, addr, 16);
	}
	struct ipcache_value *v = bpf_map_lookup_elem(&membrane_ipcache_exact, &k);
	if (v)
		return v->identity;
	v = bpf_map_lookup_elem(&membrane_ipcache, &k);
	return v ? v->identity : IDENTITY_WORLD;
}

/* tuple_identity is ipcache_identity of a tuple's destination (dst) or
 * source address, for handle(): a global function, checked once by the
 * verifier rather than at every path of handle() that looks an address
 * up. */
__attribute__((noinline)) __u32 tuple_identity(const struct ct_key *k, int dst)
{
	if (!k)
		return IDENTITY_WORLD;
	return ipcache_identity(k->family, dst ? k->daddr : k->saddr);
}

/* fe80::/10 or :: (IPv6). */
static __always_inline int link_local_or_unspecified(const __u8 *a)
{
	if (a[0] == 0xfe && (a[1] & 0xc0) == 0x80)
		return 1;
	const __u32 *w = (const __u32 *)a;
	return (w[0] | w[1] | w[2] | w[3]) == 0;
}

/* on_link: a neighbour discovery or MLD packet that stays on the bridge's
 * link, where it needs no rule. What the endpoint receives came from a
 * neighbour when its hop limit is still 255 (RFC 4861 makes receivers drop
 * ND with less, and a router lowers it) or its source is link-local or
 * unspecified (which no router forwards; MLD must have one). What it sends
 * stays on the link when it goes to a link-local or multicast address,
 * comes from a link-local or unspecified one, or goes to a neighbour the
 * ipcache knows (the host, an endpoint). Else it would be routed to or
 * from the world, and the policy judges it like any ICMPv6 packet: ND and
 * MLD types are no way around a policy. */
static __always_inline int on_link(const struct pkt *p, __u8 dir)
{
	if (dir == DIR_INGRESS)
		return p->hop_limit == 255 || link_local_or_unspecified(p->tuple.saddr);
	const __u8 *d = p->tuple.daddr;
	if (d[0] == 0xff || link_local_or_unspecified(d) || link_local_or_unspecified(p->tuple.saddr))
		return 1;
	__u32 id = ipcache_identity(6, d);
	return id != IDENTITY_WORLD && id < FIRST_CIDR_IDENTITY;
}

/* own: id, read from an address the endpoint sends from or claims, may be
 * its own. An endpoint whose identity is not known yet (init) may use no
 * address of another endpoint or of the host: only world, CIDR and init
 * ones (the daemon maps the addresses of the endpoints it judges as init
 * to init, so that their peers judge them as init too). */
static __always_inline int own(__u32 id, __u32 local)
{
	if (local == IDENTITY_INIT)
		return id == IDENTITY_WORLD || id == IDENTITY_INIT || id >= FIRST_CIDR_IDENTITY;
	return id == local;
}

/* spoofed: the packet's source address (or the address an ARP sender or
 * a neighbour advertisement's target claims) belongs to another identity
 * than local (see own). Neighbour discovery and MLD may come from link-local or
 * unspecified addresses, which the ipcache does not hold; those pass. From
 * any other address they are checked like the rest: a neighbour or router
 * solicitation updates its receivers' neighbour entry for its source
 * address, as an ARP request does for its sender's. Other traffic from a
 * link-local address is dropped: it cannot be told from another
 * endpoint's. */
static __always_inline int spoofed(struct __sk_buff *skb, struct pkt *p, __u32 local)
{
	if (skb->protocol == bpf_htons(ETH_P_ARP)) {
		/* Ethernet/IPv4 ARP: the sender's protocol address at 14 + 14,
		 * the target's at 14 + 24; they stand for the tuple in a record. */
		p->tuple.family = 4;
		if (bpf_skb_load_bytes(skb, ETH_HLEN + 14, p->tuple.saddr, 4) < 0 ||
		    bpf_skb_load_bytes(skb, ETH_HLEN + 24, p->tuple.daddr, 4) < 0)
			return 1;
		if (!*(__u32 *)p->tuple.saddr) /* a probe: "who has", from no address yet */
			return 0;
		return !own(ipcache_identity(4, p->tuple.saddr), local);
	}
	if (p->nd_target_off) {
		/* A neighbour advertisement claims its target address, as ARP its
		 * sender's. A link-local target cannot be told from another's and
		 * is not checked (the traffic it would draw is dropped below); its
		 * source address still is. */
		__u8 target[16];
		if (bpf_skb_load_bytes(skb, p->nd_target_off, target, 16) < 0)
			return 1;
		if (!(target[0] == 0xfe && (target[1] & 0xc0) == 0x80) && !own(ipcache_identity(6, target), local))
			return 1;
	}
	if (p->neighbor && link_local_or_unspecified(p->tuple.saddr))
		return 0;
	return !own(ipcache_identity(p->tuple.family, p->tuple.saddr), local);
}

/* A policy entry from membrane_policy4; 0 when it is not there (or was
 * changing while we read it). */
static __always_inline int pol4_lookup(__u32 local, __u32 remote, __u8 dir, __u8 proto, __u16 port,
				       struct policy_value *out)
{
	__u32 key = dir | (__u32)proto << 8 | (__u32)port << 16;
	__u32 idx = pol4_set_of(local, remote, key);
	struct pol4_set *set = bpf_map_lookup_elem(&membrane_policy4, &idx);
	if (!set)
		return 0;
	int i;
#pragma unroll
	for (i = 0; i < INLINE_WAYS; i++) {
		struct pol4_slot *sl = &set->slot[i];
		__u32 seq = *(volatile __u32 *)&sl->seq;
		if (*(volatile __u32 *)&sl->remote != remote || *(volatile __u32 *)&sl->local != local ||
		    *(volatile __u32 *)&sl->key != key)
			continue;
		__u32 rule = *(volatile __u32 *)&sl->rule_id;
		__u32 val = *(volatile __u32 *)&sl->value;
		if ((seq & 1) || *(volatile __u32 *)&sl->seq != seq)
			return 0;
		out->rule_id = rule;
		out->proxy_port = val & 0xffff;
		out->action = (val >> 16) & 0xff;
		out->flags = val >> 24;
		return 1;
	}
	return 0;
}

/* The policy lookup of policies/model.go: exact remote, then any remote;
 * the writer stores a default-deny catch-all as an any-remote entry. */
static __always_inline void judge(__u32 local, __u8 dir, __u8 proto, __u16 port, struct verdict *v)
{
	v->rule_id = 0;
	v->proxy_port = 0;
	v->audit = 0;
	v->reason = REASON_ALLOW_DEFAULT;

	/* Found entries are copied: the verifier then sees one stack value,
	 * not a map value that might be null, whichever table answered. */
	struct policy_value val;
	int found = v->remote != IDENTITY_ANY && pol4_lookup(local, v->remote, dir, proto, port, &val);
	if (!found && v->remote != IDENTITY_ANY) {
		struct policy_exact_key ek = {
			.local = local, .remote = v->remote, .direction = dir, .protocol = proto, .port = port};
		struct policy_value *pv = bpf_map_lookup_elem(&membrane_policy_exact, &ek);
		if (pv) {
			val = *pv;
			found = 1;
		}
	}
	if (!found) {
		void *inner = bpf_map_lookup_elem(&membrane_policy, &local);
		if (!inner)
			return;
		struct policy_key k = {
			.prefixlen = 64,
			.identity = bpf_htonl(v->remote),
			.direction = dir,
			.protocol = proto,
			.port = bpf_htons(port),
		};
		struct policy_value *pv = bpf_map_lookup_elem(inner, &k);
		if (!pv) {
			k.identity = IDENTITY_ANY;
			pv = bpf_map_lookup_elem(inner, &k);
		}
		if (!pv)
			return;
		val = *pv;
	}
	struct policy_value *pv = &val;
	v->rule_id = pv->rule_id;
	v->audit = pv->flags & POLICY_F_AUDIT;
	if (pv->action == ACTION_DENY) {
		v->reason = (pv->flags & POLICY_F_DEFAULT) ? REASON_DROP_DEFAULT_DENY : REASON_DROP_POLICY;
		return;
	}
	v->proxy_port = pv->proxy_port;
	v->reason = pv->proxy_port ? REASON_REDIRECT : REASON_ALLOW_POLICY;
}

#define FANOUT_NONE 0
#define FANOUT_PASS 1
#define FANOUT_DROP 2

/* fanout judges a new flow coming into an endpoint (local: its identity;
 * proto, port: the flow's) by the egress rules of the endpoint that sent
 * it, for when that one's egress could not: a datagram it sent to a
 * multicast or broadcast address (or any other address of no endpoint of
 * the receiver's identity: one the receiver gave itself), which its egress
 * judged as going to the world and the bridge floods to every port (policy
 * decision 89); or a packet to a published port on a host address, which
 * its egress judged as going to the host and the host's DNAT then sent to
 * this endpoint (decision 91). in is the device the packet came in through
 * (0: none): a sender's veth (the bridge forwards from there, and a packet
 * the host routed keeps it too; the host's own packets come in from none).
 * Else that endpoint's egress rules towards this one would not hold for
 * anything it can send as a broadcast or through a published port.
 * FANOUT_NONE: the sender is no endpoint, enforces no egress, or is not the
 * packet's source (v->remote: the host masqueraded it);
 * FANOUT_PASS: the sender's egress admits it, or would deny it and audits
 * it (v->audit set, v says why); FANOUT_DROP: it denies it, v says why,
 * and the receiver's audit mode does not change that (it is not the
 * receiver's rule). */
static __always_inline int fanout(__u32 in, __u32 local, __u8 proto, __u16 port, struct verdict *v)
{
	if (!in)
		return FANOUT_NONE;
	struct endpoint_info *sep = endpoint(in);
	if (!sep)
		return FANOUT_NONE;
	/* from its own address: not one the host put in place of it (a
	 * masquerade) */
	if (!(sep->flags & EP_ENFORCE_EGRESS) || sep->identity != v->remote)
		return FANOUT_NONE;
	__u32 sender = sep->identity;
	int audit = sep->flags & EP_AUDIT;
	struct verdict sv = {.remote = local};
	judge(sender, DIR_EGRESS, proto, port, &sv);
	if (sv.reason < REASON_FIRST_DROP)
		return FANOUT_PASS;
	v->rule_id = sv.rule_id;
	v->remote = sender;
	v->reason = sv.reason;
	v->audit = sv.audit || audit;
	return v->audit ? FANOUT_PASS : FANOUT_DROP;
}

/* judge_new is judge() for handle()'s new flows (dir_proto: the direction
 * and the protocol << 8), then, for a packet into an endpoint from in (the
 * sender's veth, 0 when it is not to be asked), fanout(): what fanout
 * returns. A global function, checked once by the verifier. */
__attribute__((noinline)) int judge_new(__u32 local, __u32 dir_proto, __u32 port, __u32 in, struct verdict *v)
{
	if (!v)
		return FANOUT_NONE;
	judge(local, dir_proto & 0xff, dir_proto >> 8, port, v);
	if (v->reason >= REASON_FIRST_DROP)
		return FANOUT_NONE;
	return fanout(in, local, dir_proto >> 8, port, v);
}

static __always_inline __u64 lifetime(const struct config *cfg, const struct ct_entry *e, __u8 proto)
{
	__u32 s;
	if (proto != IPPROTO_TCP)
		s = cfg->lifetime_nontcp;
	else if (e->state == CT_CLOSING)
		s = cfg->lifetime_close;
	else if (e->state == CT_SYN)
		s = cfg->lifetime_syn;
	else
		s = cfg->lifetime_tcp;
	return (__u64)s * NSEC;
}

/* flow_cache_close makes stale, on every CPU, the flow cache slots that may
 * pass the packets of a conntrack entry's flow (k: the tuple of a packet of
 * it, either way, its ifindex set): it moves on the close generations of
 * the slot indexes of k and of its reverse (the other direction's packets),
 * which a slot's tag holds. A slot can only be cleared on the CPU that
 * runs, and a flow's packets are handled on several. Called after the
 * entry's flag is set: a slot filled meanwhile on another CPU read the
 * close generation before the entry (handle), so either it saw the flag
 * and was not filled, or it holds the generation from before this move and
 * is stale (x86-64 keeps loads in order, and the atomic add after the
 * flag's store). Other flows keep their slots, but for those that share
 * one of the two indexes. A global function, checked once by the
 * verifier; called only on a FIN or RST new to an entry. */
__attribute__((noinline)) int flow_cache_close(const struct ct_key *k)
{
	if (!k)
		return 0;
	const __u32 *w = (const __u32 *)k;
	__u32 a = w[0], b = w[4], ports = w[8], rest = w[9] ^ w[10];
	if (k->family != 4) {
		a ^= w[1] ^ w[2] ^ w[3];
		b ^= w[5] ^ w[6] ^ w[7];
	}
	/* the reverse: addresses swapped, and the two 16-bit ports */
	__u32 idx[2] = {flow_index_at(a, b, ports, rest), flow_index_at(b, a, ports >> 16 | ports << 16, rest)};
	for (int i = 0; i < 2; i++) {
		__u32 *g = bpf_map_lookup_elem(&membrane_flow_close, &idx[i]);
		if (g)
			__sync_fetch_and_add(g, 1);
	}
	return 1;
}

/* TCP state. No sequence numbers are tracked, so a RST is taken at its
 * word, but not for good: anyone who knows a connection's addresses and
 * ports can send one (an endpoint drops it unless its sequence number is in
 * the window), and a connection that then goes on must not lose its entry
 * after the close lifetime (the first packet of its reply direction after
 * an idle spell would be judged as a new flow). A segment with ACK (not a
 * RST, nor a new SYN) after a RST shows that the RST was not taken: the
 * connection is back to established. After a RST that was taken, a stray
 * segment of the dead connection gets a RST back from its end, which closes
 * the entry again. A FIN can be forged as blindly: new data (a segment with
 * a payload and no FIN) from the side whose FIN was seen shows that the FIN
 * was not its own, as a side sends no new data after its FIN (an ACK shows
 * nothing: the side that closed goes on acknowledging the other's data).
 *
 * That data (and the ACK after a RST) must reach here, and a flow cache
 * slot filled before the FIN (the RST) would pass it on its CPU without
 * conntrack (a slot is never filled for a side while its FIN stands, nor
 * for a flow while its RST does, see handle, but one may be already): the
 * forged FIN or RST would stand, the entry take the close lifetime, and the
 * connection's packets after an idle spell be judged as new flows. So
 * ct_tcp returns 1 when it records a FIN or RST that the entry did not
 * have, and the caller then makes the slots of the flow stale on every CPU
 * (flow_cache_close), after the flag is set; other flows keep theirs. */
static __always_inline int ct_tcp(struct ct_entry *e, __u8 flags, int data, int reply)
{
	int closed = 0;
	if (flags & TCP_RST) {
		e->state = CT_CLOSING;
		if (!(e->flags & CT_F_RST)) {
			e->flags |= CT_F_RST;
			closed = 1;
		}
		return closed;
	}
	if ((flags & TCP_SYN) && !(flags & TCP_ACK) && !reply && e->state == CT_CLOSING) {
		/* port reuse: a new connection on a closed tuple */
		e->state = CT_SYN;
		e->flags &= ~(CT_F_FIN_ORIG | CT_F_FIN_REPLY | CT_F_RST);
		return 0;
	}
	if ((e->flags & CT_F_RST) && (flags & TCP_ACK) && !(flags & TCP_SYN)) {
		e->flags &= ~CT_F_RST;
		e->state = CT_ESTABLISHED;
	}
	__u8 fin = reply ? CT_F_FIN_REPLY : CT_F_FIN_ORIG;
	if (flags & TCP_FIN) {
		if (!(e->flags & fin)) {
			e->flags |= fin;
			closed = 1;
		}
	} else if (data && (e->flags & fin)) {
		/* New data from a side whose FIN was seen: that FIN was not
		 * its own (policy decision 63). */
		e->flags &= ~fin;
		if (e->state == CT_CLOSING && !(e->flags & CT_F_RST))
			e->state = CT_ESTABLISHED;
	}
	if ((e->flags & (CT_F_FIN_ORIG | CT_F_FIN_REPLY)) == (CT_F_FIN_ORIG | CT_F_FIN_REPLY))
		e->state = CT_CLOSING;
	else if (e->state == CT_SYN && reply && (flags & TCP_ACK))
		e->state = CT_ESTABLISHED;
	return closed;
}

#define REJUDGE_KEPT 0
#define REJUDGE_DENIED 1
#define REJUDGE_AUDITED 2

/* rejudge judges a tracked flow again, as its first packet was judged,
 * under the policy in force (orig: the key of the packet that made the
 * entry). REJUDGE_DENIED: the policy now denies it and it is not audited,
 * so the caller deletes the entry (the connection is cut); v says why.
 * Otherwise the entry takes the new rule and proxy port, and the caller
 * sets its revision; REJUDGE_AUDITED: it would be denied, and passes as
 * audited. A global function: the verifier checks it once, not on every
 * path of handle() that reaches it (a tracked flow's packets, and the
 * ICMP errors related to it). */
static __always_inline int rejudge_entry(struct ct_entry *e, const struct ct_key *orig, __u32 local, int audit_ep,
					 struct verdict *v)
{
	int ret = REJUDGE_KEPT;
	if (e->flags & CT_F_FROM_PROXY)
		v->remote = e->remote_identity;
	else
		v->remote = ipcache_identity(orig->family, e->direction == DIR_EGRESS ? orig->daddr : orig->saddr);
	/* Come in through another device than its source endpoint's: init
	 * then (arrived_from), and still while the address is an endpoint's. */
	if ((e->flags & CT_F_FOREIGN) && v->remote >= FIRST_LOCAL_IDENTITY && v->remote < FIRST_CIDR_IDENTITY)
		v->remote = IDENTITY_INIT;
	/* A flow the sender's egress judged as going elsewhere (fanout): its
	 * egress rules towards this endpoint first, a rule's audit flag
	 * standing for the sender's audit mode, which is not known here. */
	if (e->flags & CT_F_FANOUT) {
		__u32 sender = v->remote;
		v->remote = local;
		judge(sender, DIR_EGRESS, orig->protocol, e->policy_port, v);
		v->remote = sender;
		if (v->reason >= REASON_FIRST_DROP && !v->audit)
			return REJUDGE_DENIED;
	}
	judge(local, e->direction, orig->protocol, e->policy_port, v);
	if (v->reason >= REASON_FIRST_DROP) {
		if (!(audit_ep || v->audit))
			return REJUDGE_DENIED;
		e->flags |= CT_F_AUDIT;
		ret = REJUDGE_AUDITED;
	}
	e->rule_id = v->rule_id;
	/* the proxy's own upstream flows are never redirected */
	e->proxy_port = (e->flags & CT_F_FROM_PROXY) ? 0 : v->proxy_port;
	e->remote_identity = v->remote;
	return ret;
}

__attribute__((noinline)) int rejudge(struct ct_entry *e, const struct ct_key *orig, __u32 local, int audit_ep,
				      struct verdict *v)
{
	if (!e || !orig || !v)
		return REJUDGE_DENIED;
	return rejudge_entry(e, orig, local, audit_ep, v);
}

/* A first fragment that passes leaves its protocol and ports for the
 * later fragments of its datagram (fk: their key). */
static __always_inline void frag_note(const struct pkt *p, const struct frag_key *fk)
{
	if (!p->first_frag)
		return;
	struct frag_value fv = {.sport = p->tuple.sport,
				.dport = p->tuple.dport,
				.policy_port = p->policy_port,
				.protocol = p->tuple.protocol};
	bpf_map_update_elem(&membrane_frag, fk, &fv, BPF_ANY);
}

static __always_inline void swap_tuple(struct ct_key *dst, const struct ct_key *src)
{
	__builtin_memcpy(dst->saddr, src->daddr, 16);
	__builtin_memcpy(dst->daddr, src->saddr, 16);
	dst->sport = src->dport;
	dst->dport = src->sport;
	dst->protocol = src->protocol;
	dst->family = src->family;
	dst->pad = 0;
	dst->ifindex = src->ifindex;
}

static __always_inline int drop_or_audit(struct __sk_buff *skb, struct pkt *p, __u8 dir, __u8 evflags,
					 const struct endpoint_info *ep, __u32 local, struct verdict *v,
					 int audit)
{
	if (audit) {
		count(REASON_AUDIT, dir, skb->len);
		emit(skb, p, EVENT_AUDIT, v->reason, dir, evflags, ep, local, v);
		return VERDICT_PASS;
	}
	count(v->reason, dir, skb->len);
	emit(skb, p, EVENT_DROP, v->reason, dir, evflags, ep, local, v);
	return VERDICT_DROP;
}

/* to_proxy sends a packet of an L7 flow to the proxy: marked with the
 * to-proxy magic and port, redirected to the ingress of the endpoint's
 * bridge, where membrane_bridge (bridge.c) assigns it to the proxy's socket. */
static __always_inline int to_proxy(struct __sk_buff *skb, struct pkt *p, const struct endpoint_info *ep,
				    __u32 local, __u16 port, __u8 flow_dir, __u8 dir)
{
	if (!ep || !ep->bridge_ifindex) {
		count(REASON_DROP_PROXY_NO_BRIDGE, dir, skb->len);
		emit(skb, p, EVENT_DROP, REASON_DROP_PROXY_NO_BRIDGE, dir, 0, ep, local, 0);
		return VERDICT_DROP;
	}
	skb->mark = MARK_MAGIC_TO_PROXY | (flow_dir == DIR_EGRESS ? MARK_TO_PROXY_EGRESS : 0) | port;
	return bpf_redirect(ep->bridge_ifindex, BPF_F_INGRESS);
}

#define RELATED_NONE 3

/* related says whether an ICMP error quoting a packet is related, through
 * the entry of tuple k (the quoted packet's, its ifindex set, or the
 * reverse: the quoted packet may be a reply), to a connection the policy
 * still allows: a live entry admitted under the revision rev in force, or
 * judged again now as that connection's own next packet would be. A
 * connection the policy now denies is cut (its entry deleted):
 * REJUDGE_DENIED, and the caller tries the other tuple, since the quote may
 * be a packet of two tracked connections, one each way. RELATED_NONE: no
 * live entry. REJUDGE_AUDITED: related to one that audit mode keeps (v says
 * why). Related to none, the error is judged by the rules for its type
 * (semantics 6). A global function, checked once by the verifier; it has
 * rejudge's body rather than a call to it, which would take the stack over
 * 512 bytes. */
__attribute__((noinline)) int related(const struct ct_key *k, __u32 local, int audit_ep, __u32 rev,
				      struct verdict *v)
{
	if (!k || !v)
		return RELATED_NONE;
	struct ct_entry *e = bpf_map_lookup_elem(&membrane_ct, k);
	if (!e || e->expires < now_ns())
		return RELATED_NONE;
	if (e->revision == rev)
		return REJUDGE_KEPT;
	int rj = rejudge_entry(e, k, local, audit_ep, v);
	if (rj == REJUDGE_DENIED) {
		bpf_map_delete_elem(&membrane_ct, k);
		return rj;
	}
	e->revision = rev;
	return rj;
}

/* ct_note_foreign is called when a new flow into an endpoint (k: its
 * tuple) was judged as coming from init. If its source address is an
 * endpoint's, it was judged so because it came in through another device
 * than that endpoint's (arrived_from, decision 56), and its entry is marked
 * so that it is judged as init again after a policy change (rejudge), as
 * long as the address is an endpoint's. A global function (rare: init
 * sources only), checked once by the verifier. */
__attribute__((noinline)) int ct_note_foreign(const struct ct_key *k)
{
	if (!k)
		return 0;
	__u32 id = ipcache_identity(k->family, k->saddr);
	if (id < FIRST_LOCAL_IDENTITY || id >= FIRST_CIDR_IDENTITY)
		return 0;
	struct ct_entry *e = bpf_map_lookup_elem(&membrane_ct, k);
	if (e)
		e->flags |= CT_F_FOREIGN;
	return 1;
}

/* flow_cache_follow is called when a new flow that goes to the L7 proxy
 * has its entry (k: its tuple, dir: its direction). Its packets may have
 * passed until now as the replies of a flow the other way (the peer's, from
 * this destination port to this source port), and a flow cache slot, on any
 * CPU, may still pass them so: they go to the proxy now. Every slot is then
 * made stale by moving the programs' flow generation on. Rare (a new L7
 * flow on the tuple of a tracked one), so the lookup is made only there. A
 * flow of the same tuple and direction before it needs nothing: under the
 * same revision it was judged the same, so went to the proxy too, and its
 * packets never had a slot. A global function, checked once by the
 * verifier. */
__attribute__((noinline)) int flow_cache_follow(const struct ct_key *k, __u32 dir)
{
	if (!k)
		return 0;
	struct ct_key rk;
	swap_tuple(&rk, k);
	struct ct_entry *re = bpf_map_lookup_elem(&membrane_ct, &rk);
	if (!re || re->direction == dir)
		return 0;
	__u32 zero = 0;
	__u32 *dgenp = bpf_map_lookup_elem(&membrane_flow_gen_dp, &zero);
	if (dgenp)
		__sync_fetch_and_add(dgenp, 1);
	return 1;
}

/* The packet most often seen, read straight from the packet with nothing
 * copied: IPv4 without options, TCP with no SYN, FIN or RST, not a
 * fragment, whose flow has a live flow cache slot on this CPU. It takes
 * exactly the branch of handle() below that the same packet would (parse's
 * fast path, the endpoint checks, the slot check), so a hit (1) passes with
 * the same count, and anything else (0) lets handle() judge the packet from
 * the start. */
static __always_inline int established_fast(struct __sk_buff *skb, const __u8 dir)
{
	if (skb->protocol != bpf_htons(ETH_P_IP))
		return 0;
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ipv4hdr *iph = data + ETH_HLEN;
	__u8 *th = (__u8 *)(iph + 1);
	if ((void *)(th + 20) > data_end || *(__u16 *)(data + 12) != bpf_htons(ETH_P_IP) || iph->ver_ihl != 0x45 ||
	    iph->protocol != IPPROTO_TCP || (iph->frag_off & bpf_htons(0x3fff)) ||
	    (th[13] & (TCP_SYN | TCP_FIN | TCP_RST)))
		return 0;
	__u32 tot = bpf_ntohs(iph->tot_len); /* 0 (BIG TCP) takes handle() */
	__u32 len = skb->len;
	if (tot < 40 || ETH_HLEN + tot > len)
		return 0;

	/* No endpoint lookup: a slot is only filled for a packet that passed
	 * the endpoint checks, and any change to an endpoint (or to the verdict
	 * for unknown ones) moves the flow generation on, which the tag holds. */
	__u32 ifindex = skb->ifindex;
	__u32 zero = 0;
	struct config *cfg = bpf_map_lookup_elem(&membrane_config, &zero);
	__u32 *genp = bpf_map_lookup_elem(&membrane_flow_gen, &zero);
	__u32 *dgenp = bpf_map_lookup_elem(&membrane_flow_gen_dp, &zero);
	if (!cfg || !genp || !dgenp)
		return 0;
	__u32 gen = *(volatile __u32 *)genp + *(volatile __u32 *)dgenp;
	__u64 tag = *(volatile __u32 *)&cfg->revision | (__u64)gen << 32;

	/* The tuple's words as struct ct_key holds them (see flow_slot). */
	__u32 saddr, daddr, ports;
	__builtin_memcpy(&saddr, &iph->saddr, 4);
	__builtin_memcpy(&daddr, &iph->daddr, 4);
	__builtin_memcpy(&ports, __builtin_assume_aligned(th, 4), 4);
	const __u32 proto_family = IPPROTO_TCP | 4 << 8;
	__u32 idx = flow_index_at(saddr, daddr, ports, proto_family ^ ifindex);
	struct flow_slot *fs = bpf_map_lookup_elem(&membrane_flow_cache, &idx);
	__u32 *closep = bpf_map_lookup_elem(&membrane_flow_close, &idx);
	if (!fs || !closep)
		return 0;
	tag += (__u64)*(volatile __u32 *)closep << 32;
	const __u32 *x = (const __u32 *)&fs->key;
	if ((fs->tag ^ tag) | (fs->dir ^ dir) | (x[0] ^ saddr) | (x[4] ^ daddr) | (x[8] ^ ports) |
	    (x[9] ^ proto_family) | (x[10] ^ ifindex))
		return 0;
	if (bpf_jiffies64() >= fs->until)
		return 0;
	count(fs->reply ? REASON_ALLOW_REPLY : REASON_ALLOW_ESTABLISHED, dir, len);
	return 1;
}

static __always_inline int handle(struct __sk_buff *skb, const __u8 dir)
{
	if (established_fast(skb, dir))
		return VERDICT_PASS;

	__u32 zero = 0;
	struct config *cfg = bpf_map_lookup_elem(&membrane_config, &zero);
	if (!cfg)
		return VERDICT_DROP;

	/* Read once, before any lookup (the endpoint's included): what is
	 * judged below is tagged with the revision and flow generation that
	 * were current before the maps were read, so a change that lands
	 * meanwhile (its bump comes after its map writes) leaves the tag
	 * stale, never the verdict. */
	__u32 rev = *(volatile __u32 *)&cfg->revision;
	__u32 *genp = bpf_map_lookup_elem(&membrane_flow_gen, &zero);
	__u32 *dgenp = bpf_map_lookup_elem(&membrane_flow_gen_dp, &zero);
	if (!genp || !dgenp)
		return VERDICT_DROP;
	__u32 gen = *(volatile __u32 *)genp + *(volatile __u32 *)dgenp;
	__u64 tag = rev | (__u64)gen << 32;

	struct pkt p = {};
	__u32 ifindex = skb->ifindex;
	struct endpoint_info *ep = endpoint(ifindex);
	__u32 local = ep ? ep->identity : IDENTITY_INIT;
	struct verdict v = {};

	int r = parse(skb, &p);
	if (r) {
		v.reason = r;
		count(r, dir, skb->len);
		emit(skb, &p, EVENT_DROP, r, dir, 0, ep, local, 0);
		return VERDICT_DROP;
	}
	/* What an endpoint sends carries an address of its own: the identity
	 * of a packet's source is read from its address, and an endpoint that
	 * sent from another's (the host's, a neighbour's), or claimed one in
	 * ARP to take its replies, would pass for it. Checked before anything
	 * may pass, whatever the endpoint enforces. An interface whose
	 * endpoint is not known yet (init) is checked too where its traffic
	 * is let through (CFG_UNKNOWN_ALLOW): its own addresses are not known
	 * yet, but those of the endpoints and the host are not its own. */
	if (dir == DIR_EGRESS && ((ep && local != IDENTITY_INIT) || (cfg->flags & CFG_UNKNOWN_ALLOW)) &&
	    spoofed(skb, &p, local)) {
		count(REASON_DROP_SPOOFED_SOURCE, dir, skb->len);
		v.remote = ipcache_identity(p.tuple.family, p.tuple.daddr);
		emit(skb, &p, EVENT_DROP, REASON_DROP_SPOOFED_SOURCE, dir, 0, ep, local, &v);
		return VERDICT_DROP;
	}
	/* What reaches an endpoint is addressed to it: a container that sends
	 * a frame from another's MAC address makes the bridge forward that
	 * one's traffic to its port, where it would be judged (and received,
	 * by a packet socket) as if it were its own. A destination of another
	 * identity (an endpoint, the host) drops, whatever the endpoint
	 * enforces; world and CIDR identities (multicast, broadcast, addresses
	 * not known yet) pass on. So for an interface whose endpoint is not
	 * known yet, where its traffic is let through. */
	if (dir == DIR_INGRESS && ((ep && local != IDENTITY_INIT) || (cfg->flags & CFG_UNKNOWN_ALLOW)) &&
	    p.tuple.family) {
		__u32 to = ipcache_identity(p.tuple.family, p.tuple.daddr);
		if (to != local && to != IDENTITY_WORLD && to < FIRST_CIDR_IDENTITY) {
			count(REASON_DROP_NOT_ADDRESSED, dir, skb->len);
			v.remote = to;
			emit(skb, &p, EVENT_DROP, REASON_DROP_NOT_ADDRESSED, dir, 0, ep, local, &v);
			return VERDICT_DROP;
		}
	}
	/* ND and MLD that a router carries to or from the world fall through:
	 * the policy judges them by their ICMPv6 type. */
	if (p.neighbor && (skb->protocol == bpf_htons(ETH_P_ARP) || on_link(&p, dir))) {
		count(REASON_ALLOW_NEIGHBOR, dir, skb->len);
		return VERDICT_PASS;
	}
	if (ep && !(ep->flags & (dir == DIR_EGRESS ? EP_ENFORCE_EGRESS : EP_ENFORCE_INGRESS))) {
		count(REASON_ALLOW_NOT_ENFORCED, dir, skb->len);
		return VERDICT_PASS;
	}
	if (!ep && !(cfg->flags & CFG_UNKNOWN_ALLOW)) {
		count(REASON_DROP_UNKNOWN_ENDPOINT, dir, skb->len);
		emit(skb, &p, EVENT_DROP, REASON_DROP_UNKNOWN_ENDPOINT, dir, 0, ep, local, 0);
		return VERDICT_DROP;
	}
	int audit_ep = ep && (ep->flags & EP_AUDIT);
	__u8 evflags = 0;

	/* Fragments: a first fragment that passes records its protocol and
	 * ports (frag_note, where it passes), later ones borrow them. The key
	 * holds no protocol: an IPv6 datagram is reassembled by addresses and
	 * identifier alone, and its later fragments show no transport header
	 * (extension headers may follow the fragment header); IPv4's protocol
	 * is the first fragment's too. It holds the interface and direction,
	 * as conntrack does, and a first fragment that drops leaves nothing:
	 * a forged first fragment (a spoofed source, a guessed identifier) can
	 * not make a datagram's later fragments drop, nor what another
	 * interface sees. Two datagrams of one address pair and identifier
	 * meet in one entry only to be judged by the later allowed first
	 * fragment's ports. */
	struct frag_key fk = {};
	if (p.first_frag || p.later_frag) {
		__builtin_memcpy(fk.saddr, p.tuple.saddr, 16);
		__builtin_memcpy(fk.daddr, p.tuple.daddr, 16);
		fk.id = p.frag_id;
		fk.family = p.tuple.family;
		fk.direction = dir;
		fk.ifindex = ifindex;
		if (p.later_frag) {
			struct frag_value *fv = bpf_map_lookup_elem(&membrane_frag, &fk);
			if (!fv) {
				v.reason = REASON_DROP_FRAG_NO_FLOW;
				count(REASON_DROP_FRAG_NO_FLOW, dir, skb->len);
				emit(skb, &p, EVENT_DROP, REASON_DROP_FRAG_NO_FLOW, dir, EV_F_FRAGMENT, ep, local, 0);
				return VERDICT_DROP;
			}
			p.tuple.sport = fv->sport;
			p.tuple.dport = fv->dport;
			p.tuple.protocol = fv->protocol;
			p.policy_port = fv->policy_port;
			evflags |= EV_F_FRAGMENT;
		}
	}

	/* Remote identity: from the proxy's mark, else the ipcache. */
	int from_proxy = 0;
	__u32 mark_identity = 0;
	if (dir == DIR_INGRESS) {
		__u32 magic = skb->mark & MARK_MAGIC_MASK;
		if (magic == MARK_MAGIC_FROM_PROXY && (skb->mark & MARK_IDENTITY_MASK)) {
			from_proxy = 1;
			mark_identity = skb->mark & MARK_IDENTITY_MASK;
		} else if (magic == MARK_MAGIC_FROM_PROXY_CIDR) {
			from_proxy = 1;
			mark_identity = FIRST_CIDR_IDENTITY + (skb->mark & MARK_IDENTITY_MASK);
		}
		/* Only the proxy's own sockets: SO_MARK takes CAP_NET_RAW, not
		 * CAP_NET_ADMIN, so a host-network container can set it. A
		 * packet with no local socket (forwarded) has cgroup id 0. */
		if (from_proxy && cfg->proxy_cgroup && bpf_skb_cgroup_id(skb) != cfg->proxy_cgroup) {
			from_proxy = 0;
			mark_identity = 0;
		}
		if (from_proxy)
			evflags |= EV_F_FROM_PROXY;
	}

	p.tuple.ifindex = ifindex;
	int syn = p.tuple.protocol == IPPROTO_TCP && (p.tcp_flags & (TCP_SYN | TCP_ACK)) == TCP_SYN;
	/* A bare SYN or an echo request opens a flow, it never answers one
	 * (an echo request has the tuple of the replies to the peer's own). */
	int opener = syn || (p.tuple.protocol == IPPROTO_ICMP && p.policy_port == 8) ||
		     (p.tuple.protocol == IPPROTO_ICMPV6 && p.policy_port == 128);
	/* The flow cache serves packets that only pass: no opener, no
	 * fragment, no TCP state change. */
	struct flow_slot *fs = 0;
	if (!opener && !(p.first_frag || p.later_frag) &&
	    !(p.tuple.protocol == IPPROTO_TCP && (p.tcp_flags & (TCP_SYN | TCP_FIN | TCP_RST)))) {
		/* The close generation is read here, before the entry: see
		 * flow_cache_close. */
		__u32 idx = flow_index(&p.tuple);
		fs = bpf_map_lookup_elem(&membrane_flow_cache, &idx);
		__u32 *closep = bpf_map_lookup_elem(&membrane_flow_close, &idx);
		if (closep)
			tag += (__u64)*(volatile __u32 *)closep << 32;
		else
			fs = 0; /* never: idx is under FLOW_CACHE_SLOTS */
		if (fs && fs->tag == tag && fs->local == local && fs->dir == dir && bpf_jiffies64() < fs->until &&
		    same_tuple(&fs->key, &p.tuple)) {
			count(fs->reply ? REASON_ALLOW_REPLY : REASON_ALLOW_ESTABLISHED, dir, skb->len);
			return VERDICT_PASS;
		}
	}

	/* A bare SYN reads no entry, so it needs the clock only to insert one. */
	__u64 now = syn ? 0 : now_ns();
	struct ct_key rk;
	int reply = 0;
	struct ct_entry *e = 0;
	/* A bare SYN opens a new connection: it is judged as one without a
	 * lookup (a retransmitted SYN gets the same verdict again, and a SYN
	 * on a tuple that is closing starts it over, as below). An opener
	 * never takes the reverse lookup (cheaper, and an echo request from
	 * the peer that reuses our identifier is not let in as a reply). */
	/* An entry is the flow of the packet that made it, in its direction:
	 * the same tuple the other way through the veth (a packet "from" the
	 * endpoint's own address that someone else put on its link, with a
	 * world address for destination) is no packet of that flow, nor a
	 * reply to it. Else such a packet, let in by the endpoint's ingress,
	 * would leave an entry that passes the endpoint's own packets of the
	 * tuple as established, whatever its egress policy says. Judged as new,
	 * it does not replace that entry either (see the insert below). */
	if (!syn) {
		e = bpf_map_lookup_elem(&membrane_ct, &p.tuple);
		if (e && e->direction != dir)
			e = 0;
	}
	if (!e && !opener) {
		swap_tuple(&rk, &p.tuple);
		e = bpf_map_lookup_elem(&membrane_ct, &rk);
		if (e && e->direction == dir)
			e = 0;
		reply = 1;
	}
	if (e && e->expires < now)
		e = 0;
	if (e) {
		if (e->revision != rev) {
			/* Judged again as its first packet was: cut when the
			 * policy now denies it. */
			const struct ct_key *orig = reply ? &rk : &p.tuple;
			int rj = rejudge(e, orig, local, audit_ep, &v);
			if (rj == REJUDGE_DENIED) {
				bpf_map_delete_elem(&membrane_ct, orig);
				return drop_or_audit(skb, &p, dir, evflags | EV_F_REVALIDATED, ep, local, &v, 0);
			}
			e->revision = rev;
			if (rj == REJUDGE_AUDITED)
				emit(skb, &p, EVENT_AUDIT, v.reason, dir, evflags | EV_F_REVALIDATED, ep, local, &v);
		}
		if (p.tuple.protocol == IPPROTO_TCP && ct_tcp(e, p.tcp_flags, p.tcp_data, reply))
			flow_cache_close(&p.tuple);
		/* The coarse clock moves once a tick: store only when the deadline
		 * moved, so most packets leave the line clean for the other
		 * direction's CPU. */
		__u64 exp = now + lifetime(cfg, e, p.tuple.protocol);
		if (e->expires != exp)
			e->expires = exp;
		/* No per-flow packet/byte counts: a write to the shared entry on
		 * every packet would bounce its cache line between the CPUs of
		 * the two directions. The per-CPU counters count. */
		count(reply ? REASON_ALLOW_REPLY : REASON_ALLOW_ESTABLISHED, dir, skb->len);
		/* Every packet of a redirected flow follows it to the proxy; the
		 * replies come from the proxy's socket and pass. */
		frag_note(&p, &fk);
		if (!reply && e->proxy_port && p.tuple.protocol == IPPROTO_TCP)
			return to_proxy(skb, &p, ep, local, e->proxy_port, e->direction, dir);
		/* Not the packets of a side whose FIN was seen, nor of a flow
		 * whose RST was: its data (after a RST, its ACKs) must reach
		 * ct_tcp (above), which forgets a forged FIN or RST (and made
		 * the slots filled before it stale, on every CPU). */
		if (fs && !(p.tuple.protocol == IPPROTO_TCP &&
			    (e->flags & (CT_F_RST | (reply ? CT_F_FIN_REPLY : CT_F_FIN_ORIG))))) {
			__builtin_memcpy(&fs->key, &p.tuple, sizeof(p.tuple));
			fs->tag = tag;
			fs->local = local;
			fs->dir = dir;
			fs->reply = reply;
			fs->until = bpf_jiffies64() + FLOW_CACHE_AHEAD_JIFFIES;
		}
		return VERDICT_PASS;
	}

	/* An ICMP error is related to the flow of the packet it quotes only
	 * when it goes to that packet's source, as every error does: else an
	 * endpoint could send errors, whatever follows the quote, to anyone by
	 * quoting any of its flows. Where it comes from is free (any router on
	 * the way may send one). */
	struct ct_key inner = {};
	if (p.icmp_error && load_inner(skb, p.inner_off, &p, &inner) == 0 &&
	    same_addr(inner.saddr, p.tuple.daddr)) {
		inner.ifindex = ifindex;
		/* rk is free: no entry was found with it */
		swap_tuple(&rk, &inner);
		int rj = related(&inner, local, audit_ep, rev, &v);
		if (rj != REJUDGE_KEPT && rj != REJUDGE_AUDITED)
			rj = related(&rk, local, audit_ep, rev, &v);
		if (rj == REJUDGE_KEPT || rj == REJUDGE_AUDITED) {
			if (rj == REJUDGE_AUDITED)
				emit(skb, &p, EVENT_AUDIT, v.reason, dir, evflags | EV_F_REVALIDATED, ep, local, &v);
			frag_note(&p, &fk);
			count(REASON_ALLOW_RELATED, dir, skb->len);
			return VERDICT_PASS;
		}
	}

	/* A new flow. */
	if (from_proxy)
		v.remote = mark_identity;
	else
		v.remote = tuple_identity(&p.tuple, dir == DIR_EGRESS);
	if (dir == DIR_INGRESS && !from_proxy)
		v.remote = arrived_from(skb, ep, v.remote);
	/* Into an endpoint from another's veth: the sender's egress rules
	 * towards this endpoint hold too (fanout), and again when a policy
	 * change judges the flow again (CT_F_FANOUT, rejudge). Its egress
	 * judged the packet as going elsewhere when it went to an address not
	 * this endpoint's (multicast, broadcast: decision 89) or to a
	 * published port on a host address, which the host translated to
	 * this endpoint's after that (decision 91); the packet keeps the
	 * sender's veth as its way in, routed or bridged. Straight from the
	 * sender, its egress gave the same verdict already. */
	__u32 in = 0;
	if (dir == DIR_INGRESS && !from_proxy)
		in = skb->ingress_ifindex;
	int fanned = judge_new(local, dir | (__u32)p.tuple.protocol << 8, p.policy_port, in, &v);
	/* The proxy's own upstream traffic was judged there: never again; and
	 * only TCP can be redirected (L7 entries are HTTP). */
	if (from_proxy || p.tuple.protocol != IPPROTO_TCP) {
		v.proxy_port = 0;
		if (v.reason == REASON_REDIRECT)
			v.reason = REASON_ALLOW_POLICY;
	}
	int audited = 0;
	if (v.reason >= REASON_FIRST_DROP) {
		if (fanned == FANOUT_DROP || !(audit_ep || v.audit))
			return drop_or_audit(skb, &p, dir, evflags, ep, local, &v, 0);
		drop_or_audit(skb, &p, dir, evflags, ep, local, &v, 1);
		audited = 1;
	}

	/* CFG_NO_CT_INSERT (benchmarks only): judge, record nothing. Nor for
	 * the reply of an ICMP request/reply pair other than echo (timestamp,
	 * information, address mask; ICMPv6 node information: no sport, the
	 * request's type in dport, see load_ports) sent unasked: its entry
	 * would have the reverse of the tuple of the peer's requests, and let
	 * them in as its replies. Nothing answers a reply. */
	if (!(cfg->flags & CFG_NO_CT_INSERT) &&
	    !((p.tuple.protocol == IPPROTO_ICMP || p.tuple.protocol == IPPROTO_ICMPV6) && !p.tuple.sport &&
	      p.tuple.dport)) {
		if (syn)
			now = now_ns();
		struct ct_entry ne = {
			.revision = rev,
			.rule_id = v.rule_id,
			.remote_identity = v.remote,
			.proxy_port = v.proxy_port,
			.policy_port = p.policy_port,
			.direction = dir,
			.state = CT_SYN,
			.flags = (audited ? CT_F_AUDIT : 0) | (from_proxy ? CT_F_FROM_PROXY : 0) |
				 (fanned != FANOUT_NONE ? CT_F_FANOUT : 0),
			.packets = 1,
			.bytes = skb->len,
		};
		if (p.tuple.protocol == IPPROTO_TCP && !(p.tcp_flags & TCP_SYN))
			ne.state = CT_ESTABLISHED; /* picked up mid-stream (e.g. after a restart) */
		if (p.tuple.protocol == IPPROTO_TCP && ct_tcp(&ne, p.tcp_flags, p.tcp_data, 0))
			flow_cache_close(&p.tuple);
		ne.expires = now + lifetime(cfg, &ne, p.tuple.protocol);
		/* The tuple may have an entry already: an expired one, one a bare
		 * SYN did not look up (a new connection on a reused port), or one
		 * of the other direction. What the endpoint sends has its own
		 * source (checked above), so an entry of its egress is its own and
		 * a packet of the same tuple coming in to it (forged on its link)
		 * does not replace it; an entry of its ingress for that tuple was
		 * made by such a packet, and what the endpoint sends does. */
		if (bpf_map_update_elem(&membrane_ct, &p.tuple, &ne, BPF_NOEXIST) < 0) {
			struct ct_entry *old = bpf_map_lookup_elem(&membrane_ct, &p.tuple);
			if (!old || old->direction == dir || dir == DIR_EGRESS)
				bpf_map_update_elem(&membrane_ct, &p.tuple, &ne, BPF_ANY);
		}
		if (v.proxy_port)
			flow_cache_follow(&p.tuple, dir);
		if (dir == DIR_INGRESS && v.remote == IDENTITY_INIT)
			ct_note_foreign(&p.tuple);
	}

	frag_note(&p, &fk);
	if (audited)
		return VERDICT_PASS;
	if (v.proxy_port) {
		/* Conntrack records the flow with its proxy port: its later
		 * packets follow it (above), and the proxy's replies, which carry
		 * the original destination's address, are its replies. */
		if (ep && ep->bridge_ifindex) {
			count(v.reason, dir, skb->len);
			emit(skb, &p, EVENT_REDIRECT, v.reason, dir, evflags, ep, local, &v);
		}
		return to_proxy(skb, &p, ep, local, v.proxy_port, dir, dir);
	}
	count(v.reason, dir, skb->len);
	if (cfg->allow_sample && bpf_get_prandom_u32() % cfg->allow_sample == 0) {
		emit(skb, &p, EVENT_ALLOW, v.reason, dir, evflags, ep, local, &v);
	}
	return VERDICT_PASS;
}

/* tc ingress of the host-side veth: what the container sends. */
SEC("tc")
int membrane_egress(struct __sk_buff *skb)
{
	return handle(skb, DIR_EGRESS);
}

/* tc egress of the host-side veth: what the container receives. */
SEC("tc")
int membrane_ingress(struct __sk_buff *skb)
{
	return handle(skb, DIR_INGRESS);
}

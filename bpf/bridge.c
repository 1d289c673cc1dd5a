//go:build ignore

/* Membrane's bridge program: the second half of the L7 redirect
 * (design.md "L7"). The container programs mark a packet that an L7 entry
 * sends to the proxy (MARK_MAGIC_TO_PROXY | direction << 16 | proxy port)
 * and bpf_redirect it to the ingress of the container's bridge. Here, at tc
 * ingress of that bridge, the packet is given to the proxy's socket with
 * bpf_sk_assign: the socket of this tuple first (every packet after the
 * SYN; and the proxy's side of a connection it closed first, in TIME_WAIT,
 * see below), else the transparent listener on the proxy port. The
 * redirect ran eth_type_trans, which called the frame OTHERHOST (its
 * destination MAC is the container's); it becomes HOST again so IP accepts
 * it, and the fwmark rule (proxy.DefaultRouting) delivers it locally.
 *
 * Assigning at the veth does not work on a bridge: the bridge forwards the
 * frame at L2 and the assignment is lost.
 *
 * Packets without the to-proxy mark are the bridge's ordinary traffic and
 * pass untouched. The program shares the datapath's counters and events
 * (the loader replaces these two maps with the datapath's own). */

#include "membrane.h"
#include "packet.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Replaced at load time by the datapath's maps of the same name. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct config);
	__uint(max_entries, 1);
} membrane_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct counter);
	__uint(max_entries, COUNTER_SLOTS);
} membrane_counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} membrane_events SEC(".maps");

static __always_inline void count(__u32 reason, __u8 dir, __u32 len)
{
	__u32 slot = reason * 2 + dir;
	if (slot >= COUNTER_EVENTS_LOST)
		return;
	struct counter *c = bpf_map_lookup_elem(&membrane_counters, &slot);
	if (c) {
		c->packets++;
		c->bytes += len;
	}
}

static __always_inline int drop(struct __sk_buff *skb, __u32 reason, __u8 dir, __u8 family,
				const __u8 *saddr, const __u8 *daddr, __u16 sport, __u16 dport, __u16 port)
{
	count(reason, dir, skb->len);
	struct event *e = event_reserve(&membrane_events, &membrane_counters);
	if (!e)
		return VERDICT_DROP;
	__builtin_memset(e, 0, sizeof(*e));
	e->timestamp = bpf_ktime_get_coarse_ns();
	e->ifindex = skb->ifindex;
	e->len = skb->len;
	e->sport = bpf_ntohs(sport);
	e->dport = bpf_ntohs(dport);
	e->proxy_port = port;
	e->type = EVENT_DROP;
	e->reason = reason;
	e->direction = dir;
	e->protocol = IPPROTO_TCP;
	e->family = family;
	__builtin_memcpy(e->saddr, saddr, 16);
	__builtin_memcpy(e->daddr, daddr, 16);
	bpf_ringbuf_submit(e, 0);
	return VERDICT_DROP;
}

SEC("tc")
int membrane_bridge(struct __sk_buff *skb)
{
	__u32 mark = skb->mark;
	if ((mark & MARK_MAGIC_MASK) != MARK_MAGIC_TO_PROXY)
		return VERDICT_PASS;
	__u16 port = mark & MARK_PORT_MASK;
	__u8 dir = (mark & MARK_TO_PROXY_EGRESS) ? DIR_EGRESS : DIR_INGRESS;

	/* Addresses on the stack for events (IPv4 in the first 4 bytes). */
	__u8 saddr[16] = {}, daddr[16] = {};
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	if (data + ETH_HLEN > end)
		return drop(skb, REASON_DROP_PROXY_ASSIGN, dir, 0, saddr, daddr, 0, 0, port);
	__u16 proto = ((__u8 *)data)[12] << 8 | ((__u8 *)data)[13];

	struct bpf_sock_tuple t = {};
	__u32 tlen;
	__u8 family;
	/* The TCP header up to its flags. */
	struct tcphdr_head {
		__be16 source;
		__be16 dest;
		__be32 seq;
		__be32 ack_seq;
		__u8 doff;
		__u8 flags;
	} *tcp;
	__u32 l4off;
	if (proto == ETH_P_IP) {
		struct ipv4hdr *ip = data + ETH_HLEN;
		if ((void *)(ip + 1) > end)
			return drop(skb, REASON_DROP_PROXY_ASSIGN, dir, 0, saddr, daddr, 0, 0, port);
		__u32 ihl = (ip->ver_ihl & 0x0f) * 4;
		family = 4;
		__builtin_memcpy(saddr, &ip->saddr, 4);
		__builtin_memcpy(daddr, &ip->daddr, 4);
		if (ip->protocol != IPPROTO_TCP || ihl < 20)
			return drop(skb, REASON_DROP_PROXY_ASSIGN, dir, family, saddr, daddr, 0, 0, port);
		/* A fragment cannot reach the proxy: IP reassembly builds a new
		 * skb without the assignment, and the stack then looks the
		 * datagram up as if it were its own (a host service on the
		 * original destination port gets the SYN, and the later packets
		 * of the tuple follow it there, below). A later fragment has no
		 * TCP header to look up by either. */
		if (ip->frag_off & bpf_htons(0x3fff))
			return drop(skb, REASON_DROP_PROXY_ASSIGN, dir, family, saddr, daddr, 0, 0, port);
		l4off = ETH_HLEN + ihl;
		tcp = (void *)ip + ihl;
		if ((void *)(tcp + 1) > end)
			return drop(skb, REASON_DROP_PROXY_ASSIGN, dir, family, saddr, daddr, 0, 0, port);
		t.ipv4.saddr = ip->saddr;
		t.ipv4.daddr = ip->daddr;
		t.ipv4.sport = tcp->source;
		t.ipv4.dport = tcp->dest;
		tlen = sizeof(t.ipv4);
	} else if (proto == ETH_P_IPV6) {
		struct ipv6hdr *ip6 = data + ETH_HLEN;
		if ((void *)(ip6 + 1) > end)
			return drop(skb, REASON_DROP_PROXY_ASSIGN, dir, 0, saddr, daddr, 0, 0, port);
		family = 6;
		__builtin_memcpy(saddr, ip6->saddr, 16);
		__builtin_memcpy(daddr, ip6->daddr, 16);
		/* The container program redirects TCP only, and a TCP segment
		 * with extension headers is not worth the walk here. */
		if (ip6->nexthdr != IPPROTO_TCP)
			return drop(skb, REASON_DROP_PROXY_ASSIGN, dir, family, saddr, daddr, 0, 0, port);
		l4off = ETH_HLEN + sizeof(*ip6);
		tcp = (void *)(ip6 + 1);
		if ((void *)(tcp + 1) > end)
			return drop(skb, REASON_DROP_PROXY_ASSIGN, dir, family, saddr, daddr, 0, 0, port);
		__builtin_memcpy(t.ipv6.saddr, ip6->saddr, 16);
		__builtin_memcpy(t.ipv6.daddr, ip6->daddr, 16);
		t.ipv6.sport = tcp->source;
		t.ipv6.dport = tcp->dest;
		tlen = sizeof(t.ipv6);
	} else {
		return drop(skb, REASON_DROP_PROXY_ASSIGN, dir, 0, saddr, daddr, 0, 0, port);
	}
	__u16 sport = tcp->source, dport = tcp->dest;
	__u8 flags = tcp->flags;

	/* The proxy's side of this connection once it exists (request
	 * sockets included), or in TIME_WAIT; a listener on the original
	 * destination port is not the proxy's. */
	struct bpf_sock *sk = bpf_skc_lookup_tcp(skb, &t, tlen, BPF_F_CURRENT_NETNS, 0);
	if (sk && sk->state == BPF_TCP_LISTEN) {
		bpf_sk_release(sk);
		sk = 0;
	}
	/* A full socket of the tuple must be the proxy's (its accepted
	 * sockets inherit the listener's mark): a host service's socket of
	 * the same tuple (a host destination whose connection predates the
	 * redirect) is not, and is treated like a listener: the proxy's
	 * listener answers the segment (a RST, as for a container
	 * destination). Request and TIME_WAIT sockets carry no readable
	 * mark. */
	if (sk) {
		struct bpf_sock *full = bpf_sk_fullsock(sk);
		if (full && (full->mark & MARK_MAGIC_MASK) != MARK_PROXY_LISTENER) {
			bpf_sk_release(sk);
			sk = 0;
		}
	}
	int timewait = sk && sk->state == BPF_TCP_TIME_WAIT;
	if (timewait && (flags & TCP_SYN)) {
		/* A client reusing the source port of a connection the proxy
		 * closed first. Given this SYN, the TIME_WAIT socket would
		 * hand it to whatever listens on the original destination
		 * port in this namespace (a host service: not the proxy, and
		 * a way around the policy); the proxy's listener cannot take
		 * the tuple while TIME_WAIT holds it. Without its SYN flag
		 * the segment is one the TIME_WAIT socket answers with an
		 * ACK; the client, in SYN-SENT, answers that with a RST,
		 * which retires the TIME_WAIT socket (below, like every
		 * packet of the tuple), and retransmits its SYN at once
		 * (TCP_TIMEOUT_MIN), which then finds the listener. */
		__be16 old = bpf_htons((__u16)tcp->doff << 8 | flags);
		__be16 new = bpf_htons((__u16)tcp->doff << 8 | (flags & ~TCP_SYN));
		if (bpf_l4_csum_replace(skb, l4off + 16, old, new, sizeof(new)) ||
		    bpf_skb_store_bytes(skb, l4off + 12, &new, sizeof(new), 0)) {
			bpf_sk_release(sk);
			return drop(skb, REASON_DROP_PROXY_ASSIGN, dir, family, saddr, daddr, sport, dport, port);
		}
	}
	/* Else the listener on the proxy port (bound to the wildcard address,
	 * so the original destination address still matches it). */
	if (!sk) {
		if (family == 4)
			t.ipv4.dport = bpf_htons(port);
		else
			t.ipv6.dport = bpf_htons(port);
		sk = bpf_skc_lookup_tcp(skb, &t, tlen, BPF_F_CURRENT_NETNS, 0);
		if (!sk)
			return drop(skb, REASON_DROP_PROXY_NO_LISTENER, dir, family, saddr, daddr, sport, dport, port);
		/* Only the proxy's own listener: anyone may bind a port above
		 * 1024 while membraned is down. The mark takes CAP_NET_RAW or
		 * CAP_NET_ADMIN (the cgroup check below closes the rest). */
		struct bpf_sock *full = bpf_sk_fullsock(sk);
		if (!full || (full->mark & MARK_MAGIC_MASK) != MARK_PROXY_LISTENER) {
			bpf_sk_release(sk);
			return drop(skb, REASON_DROP_PROXY_FOREIGN, dir, family, saddr, daddr, sport, dport, port);
		}
	}
	long err = bpf_sk_assign(skb, sk, 0);
	bpf_sk_release(sk);
	if (err)
		return drop(skb, REASON_DROP_PROXY_ASSIGN, dir, family, saddr, daddr, sport, dport, port);
	/* The mark takes only CAP_NET_RAW (a --network host container has
	 * it): with Config.ProxyCgroup, the socket must also be in the
	 * proxy's cgroup v2. bpf_sk_cgroup_id is refused to tc programs, but
	 * the assigned socket is skb->sk now (a request socket counts as its
	 * listener). A TIME_WAIT socket is no full socket and has none. */
	__u32 zero = 0;
	struct config *cfg = bpf_map_lookup_elem(&membrane_config, &zero);
	if (!timewait && cfg && cfg->proxy_cgroup && bpf_skb_cgroup_id(skb) != cfg->proxy_cgroup)
		return drop(skb, REASON_DROP_PROXY_FOREIGN, dir, family, saddr, daddr, sport, dport, port);
	/* bpf_redirect ran eth_type_trans: the container's MAC made the
	 * frame OTHERHOST, which IP would discard. */
	bpf_skb_change_type(skb, PACKET_HOST);
	if (timewait)
		count(REASON_PROXY_TIMEWAIT, dir, skb->len);
	return VERDICT_PASS;
}

// Package bpf is Membrane's datapath: the tc eBPF programs that enforce the
// compiled policy model on every container's host-side veth, their maps, and
// the typed Go API that loads, pins, attaches and writes them. Nothing outside
// this package touches a raw *ebpf.Map.
//
// # Programs
//
// One object (datapath.c, compiled by bpf2go, `make generate`) holds two
// programs that share every map:
//
//   - membrane_egress at tc ingress of the host-side veth: what the container
//     sends (policy direction egress).
//   - membrane_ingress at tc egress of the host-side veth: what the container
//     receives (policy direction ingress).
//
// A second object (bridge.c) holds membrane_bridge, at tc ingress of each
// bridge device (docker0, br-*): the second half of the L7 redirect, below.
// It shares the datapath's counters and events maps. Both objects include
// include/membrane.h (the map layouts, mirrored in Go) and include/packet.h
// (the packet header layouts and constants, the verdicts, event_reserve).
//
// Per packet: ARP, IPv6 neighbour discovery (ICMPv6 133-137) and multicast
// listener discovery (ICMPv6 130-132, MLDv1 query/report/done, and 143,
// MLDv2 report: a container joining ff02::1:ff00:0/104 groups sends them)
// pass, reason neighbor, whatever the policy, while they stay on the link
// (datapath.c on_link; otherwise the policy judges them by type); other
// non-IP ethertypes drop (unsupported-l3); a truncated or invalid IPv4/IPv6
// header drops (malformed-l3; so does a frame whose skb protocol, which a
// host packet socket sets as it likes, is not the frame's own ethertype,
// and an IPv6 packet from an IPv4-mapped
// address, while one to such an address is judged as to the IPv4 address),
// a truncated TCP/UDP/SCTP/ICMP header drops (malformed-l4), as does one
// that ends past its datagram's IP length, in the frame's trailing bytes
// (an extension header there: malformed-l3); IPv6
// extension headers are walked up to 8 deep (deeper: ipv6-ext-headers), and
// IPv4 authentication headers (protocol 51) up to 2 (more: ipv6-ext-headers
// too), so that the policy judges what they carry (policy decision 64). The
// endpoint comes from the endpoints map by the skb's ifindex; an interface
// not in it is identity init (5) and is dropped (unknown-endpoint) unless
// Config.UnknownEndpoint is "allow", in which case init's policy judges it
// and it may send from world, CIDR and init addresses (the daemon maps the
// addresses of the endpoints it judges as init to init).
// What an endpoint sends must come from an address of its identity
// (spoofed-source); what it receives must be addressed to one, or to an
// address of no endpoint and not the host (not-addressed). A new flow into an
// endpoint from a local endpoint's address (identity 256 up to the CIDR
// identities) keeps that identity only when the skb came in
// (ingress_ifindex) through an endpoint's veth, the endpoint's bridge, or
// the host stack (0); through any other device it is judged as init. A new
// flow into an endpoint that came in through another endpoint's veth, from
// that endpoint's identity, is judged by the sender's egress entries towards
// the receiver too, with the sender's audit mode: its egress judged it as
// going elsewhere when it was addressed to no address of the receiver's
// identity (multicast, broadcast, an address the ipcache does not know:
// policy decision 89) or to a published port on a host address, which the
// host's DNAT turned into the receiver's (the routed skb keeps the sender's
// veth as ingress_ifindex: decision 91). Its conntrack entry is marked
// (CT_F_FANOUT) so that a policy change judges it so again. A
// direction the endpoint does not enforce passes before conntrack: its flows
// are not tracked, so were it to enforce later, a reply of a connection
// opened meanwhile would be judged as a new flow the other way. The daemon
// therefore gives every endpoint both enforce flags, and "never" an empty
// policy (policy decision 75).
//
// Fragments: a first fragment is judged like any packet and, where it
// passes, leaves its protocol and ports in the fragments map (keyed by
// addresses, IP id, interface and direction; policy decision 65); a later
// fragment takes them and so follows its flow (conntrack hit, or the same
// verdict). An IPv6 later fragment's headers are read up to its
// fragment header: what follows is data, even where the first fragment had
// extension headers after its own. A later fragment whose first fragment was never seen there,
// or did not pass, drops with reason frag-no-flow.
//
// Conntrack: an LRU hash keyed by the 5-tuple plus the interface, so each end
// of a container-to-container flow keeps its own entry. A hit in the original
// or reply direction passes (established, reply), the original direction
// being the one of the packet that made the entry: the same tuple going
// the other way through the veth is neither, and a packet coming in to the
// endpoint never replaces an entry of its egress (what the endpoint sends
// replaces an entry of its ingress for its own source); an ICMP error quoting a
// tracked flow, sent to the quoted packet's source, passes (related) when
// the policy still allows that flow (an entry of another revision is judged
// again first, as below, and deleted if the flow is now denied; then the
// entry of the quote's reverse tuple, a flow the other way, is tried, and
// with neither the error is judged by its type): the
// quote's ports are read after its IPv4 options and authentication headers
// or IPv6 extension headers
// (up to four, a first fragment's fragment header included) and need only
// be there (a router may quote just 8 bytes of TCP); a quoted later
// fragment is related to nothing (policy decision 57). ICMP
// types other than echo are flows of their own (the type is in the key), so
// one admitted type lets no other through. A bare TCP SYN and an ICMP echo
// request open flows and are never taken for replies. When the config map's policy revision differs
// from the revision stored in the entry, the flow is judged again as its first
// packet was; if the policy now denies it, the packet drops and the entry is
// deleted (events carry the revalidated flag). TCP entries follow SYN, FIN
// (both sides) and RST with their own lifetimes (Config.Lifetimes); a
// segment with ACK after a RST shows that the RST was not taken (anyone who
// knows the tuple can send one) and makes the entry established again
// (policy decision 58); likewise a segment with data and no FIN from a side
// whose FIN was seen clears that side's FIN flag (policy decision 63), and
// the flow cache is not filled for that side's packets while it is set. GC removes expired entries, and an expired entry is
// never honoured.
//
// A new flow gets its remote identity from the ipcache (longest prefix on the
// peer address; miss: world, 2) — or, on ingress, from skb->mark when the L7
// proxy sent it (see below) — and is judged by the policy map: the local
// identity's inner map is searched for the exact remote identity, then for
// the any-remote entries (longest match on protocol and port each time), as
// policies.Model documents. No inner map for the identity: allow. Deny drops
// (policy-deny, or default-deny for the writer's catch-all); in audit mode
// (endpoint flag, or the entry's audit bit) the drop becomes a pass and an
// audit event. An allow with a proxy port is a redirect (TCP only).
//
// # L7 redirect
//
// A redirected flow's conntrack entry keeps its proxy port, and every packet
// of it in the original direction (the first and every later one) is marked
// MarkToProxy|port (bit 16 set when the redirect was for the container's
// egress) and bpf_redirected to the ingress of the endpoint's bridge
// (Endpoint.Bridge; none: drop, proxy-no-bridge). There membrane_bridge looks
// up the proxy's socket with bpf_skc_lookup_tcp (the one of the tuple first,
// established, a request socket or in TIME_WAIT, else the listener on the
// proxy port; the listener is bound to the wildcard address with
// IP_TRANSPARENT; a listener found for the tuple is never the proxy's),
// bpf_sk_assigns it (failure: proxy-assign-failed; no socket:
// proxy-no-listener, both counted and reported with the bridge's ifindex)
// and makes the frame PACKET_HOST again. A full socket found for the tuple
// must carry the proxy's mark (accepted sockets inherit the listener's);
// another (a host service's socket of a host destination) is passed over
// for the listener, which resets the connection. An IPv4 fragment drops
// (proxy-assign-failed): reassembly makes a new skb without the
// assignment, which the stack would then hand to whatever listens on the
// original destination.
//
// TIME_WAIT: the proxy's side of a connection it closed first (Connection:
// close, an idle timeout, a 403) stays in TIME_WAIT for 60 s and holds the
// tuple. Every packet of that tuple goes to the TIME_WAIT socket (counted as
// proxy-timewait, a pass), so the kernel's TIME_WAIT rules apply to a late
// ACK, a retransmitted FIN or a RST. A client that reuses the source port
// sends a SYN: the listener cannot take it (the kernel cannot add the new
// connection while TIME_WAIT holds the tuple and drops it, and every
// retransmit, for 60 s), and the TIME_WAIT socket given a SYN would hand it
// to a listener on the original destination port in the host namespace —
// a host service, not the proxy. So the program clears the SYN flag (and
// updates the checksum): the TIME_WAIT socket answers the segment with an
// ACK, the client (in SYN-SENT) answers that with a RST, which retires the
// TIME_WAIT socket, and retransmits its SYN after TCP_TIMEOUT_MIN (2
// jiffies), which finds the listener. Measured here (HZ=250, three runs of
// TestL7SourcePortReuseAfterProxyTimeWait): a GET on the reused port's
// connection takes 10-17 ms instead of 1-2 ms.
// It needs net.ipv4.tcp_rfc1337=0 (the default): with 1, the TIME_WAIT
// socket ignores the RST and the client waits for it to expire. A
// sk_lookup program handing the SYN to the proxy's listener through a
// SOCKMAP (no extra round trip) is not possible on kernel 6.18 here: a
// listening socket cannot be added to a SOCKMAP or SOCKHASH (EOPNOTSUPP).
// proxy.DefaultRouting's fwmark rule delivers it locally. The proxy answers
// from the original destination's address; the client's program sees those
// packets as the replies of its flow and passes them. Assigning at the veth
// does not work: the bridge forwards the frame at L2 and loses it.
// PrepareProxyPath sets what the host needs besides (notrack for
// redirected packets, tcp_early_demux=0: both for Docker's published ports),
// and AttachBridge sets accept_local on the bridge (a connection from the
// host itself comes back with the host's address as its source).
//
// Passing returns TC_ACT_UNSPEC (TCX_NEXT), so later programs still run.
//
// # skb->mark from the proxy
//
// The proxy marks upstream traffic MarkFromProxy (0xb7 in the top byte) with
// the source identity in the low 24 bits, or, for a CIDR identity (1<<24 and
// up), 0xb8 with the identity less 1<<24 (proxy.FromProxyMark). membrane_ingress
// then takes the remote identity from the mark instead of the ipcache and
// never redirects the flow again. A 0xb7 mark with identity 0 is not taken:
// the ipcache decides, which gives the proxy's address, the host. SO_MARK
// takes only CAP_NET_RAW (Linux 5.17 and later; a --network host container
// has it by default), so with Config.ProxyCgroup set the mark is taken only
// from a packet whose socket is in that cgroup v2 (bpf_skb_cgroup_id; a
// forwarded packet has none); any other is judged by its address. The
// bridge program likewise drops (proxy-foreign-listener) a connection whose
// assigned socket (skb->sk after bpf_sk_assign; bpf_sk_cgroup_id is refused
// to tc programs) is in another cgroup.
//
// # Maps
//
// All maps are pinned by name under Config.PinDir (default
// /sys/fs/bpf/membrane). Integers are host byte order unless marked (NBO).
//
//	membrane_endpoints  hash     u32 ifindex -> endpoint_info{endpoint_id u32, identity u32,
//	                             flags u32 (1 enforce ingress, 2 enforce egress, 4 audit),
//	                             present u32 (1), bridge_ifindex u32 (where L7 redirects go;
//	                             0 none), pad u32}: the list of endpoints; read by the programs
//	                             for ifindex >= 65536 only
//	membrane_endpoints_fast array[65536] ifindex -> the same endpoint_info (present 0: none):
//	                             what the programs read (an inlined array lookup, no hash call)
//	membrane_ipcache    LPM trie ipcache_key{prefixlen u32 = 32 + prefix bits, family u8 (4|6),
//	                             pad [3]u8, addr [16]u8 (IPv4 in the first 4)}
//	                             -> ipcache_value{identity u32, flags u32}; prefixes shorter
//	                             than the address only
//	membrane_ipcache_exact hash  same key and value for full-length addresses (prefixlen 64
//	                             or 160): looked up first, one hash lookup for endpoint and
//	                             host addresses
//	membrane_policy     hash of maps: u32 local identity -> LPM trie
//	                             policy_key{prefixlen u32, identity u32 NBO (remote, 0 any),
//	                             direction u8, protocol u8, port u16 NBO (ICMP: type)}
//	                             -> policy_value{rule_id u32, proxy_port u16, action u8
//	                             (0 allow, 1 deny), flags u8 (1 audit, 2 default-deny catch-all)}
//	                             prefixlen = 32 + 8, + 8 when the entry names a protocol,
//	                             + the port prefix bits; the writer adds {40, any, dir} ->
//	                             deny/default for each default-deny direction with no such entry.
//	membrane_policy_exact hash   policy_exact_key{local, remote u32 (never 0), direction,
//	                             protocol u8, port u16 (ICMP: type), host order} -> policy_value:
//	                             a cache of the full-length exact-remote entries (prefixlen 64)
//	                             of every trie, looked up first; a hit is the trie's answer, a
//	                             miss falls through to the trie; the writer may leave entries out
//	                             (Config.MaxPolicyExact, default 65536) but never keeps a stale one
//	membrane_ct         LRU hash ct_key{saddr, daddr [16]u8, sport, dport u16 NBO (ICMP echo:
//	                             the identifier in both; other ICMP: the type in sport, or a
//	                             pair's reply the request's type in dport), protocol u8, family u8, pad u16,
//	                             ifindex u32} -> ct_entry{expires u64 (CLOCK_MONOTONIC ns, coarse:
//	                             bpf_ktime_get_coarse_ns, a tick's resolution is plenty),
//	                             packets, bytes u64 (the first packet's: not counted per
//	                             packet, the shared entry stays clean), revision, rule_id, remote_identity u32,
//	                             proxy_port, policy_port u16, direction, state (1 syn,
//	                             2 established, 3 closing), flags u8 (1 audit, 2 from proxy,
//	                             4/8 FIN seen original/reply, 16 closing by a RST, 32 came in
//	                             through a foreign device: its source stays init when judged
//	                             again, 64 from another endpoint to an address not the
//	                             receiver's: the sender's egress judges it again too), pad [5]u8}
//	membrane_frag       LRU hash frag_key{saddr, daddr [16]u8, id u32, protocol (0), family u8,
//	                             direction u8, pad u8, ifindex u32} -> frag_value{sport, dport u16 NBO, policy_port u16,
//	                             protocol u8, pad u8}
//	membrane_config     array[1] config{abi, revision, flags (1 unknown endpoint allow,
//	                             2 no conntrack insert: benchmarks only),
//	                             allow_sample (1 in N new allowed flows reported; 0 none),
//	                             lifetime_tcp, lifetime_syn, lifetime_nontcp, lifetime_close
//	                             (seconds)} — all u32
//	membrane_counters   per-CPU array, slot reason*2 + direction -> counter{packets, bytes u64};
//	                             slot 48 counts events lost to a full ring buffer
//	membrane_ipcache4   mmapable array[4096] of sets of 4 u64 (address as the program loads it
//	                             << 32 | identity; 0 empty): the IPv4 entries of
//	                             membrane_ipcache_exact again, read inline (no call) before it
//	membrane_policy4    mmapable array[16384] of sets of 4 slots {seq, local, remote (0 empty),
//	                             direction | protocol << 8 | port << 16, rule_id, proxy_port |
//	                             action << 16 | flags << 24} (u32 each): the entries of
//	                             membrane_policy_exact again, read inline before it
//	                             (see "Inline tables" below)
//	membrane_flow_gen   array[1] u32: moved on when userspace deletes conntrack entries,
//	                             changes an endpoint or the verdict for unknown endpoints
//	membrane_flow_gen_dp array[1] u32: moved on (atomically) by the programs only, when a
//	                             new L7 flow takes a tuple whose packets passed as the replies
//	                             of a flow the other way; not pinned
//	membrane_flow_close array[4096] u32, one per flow cache slot index, shared by the CPUs:
//	                             moved on (atomically) by the programs only, at the indexes
//	                             of a TCP entry's tuple and of its reverse, when conntrack
//	                             records a FIN or RST that the entry did not have; not pinned
//	membrane_flow_cache per-CPU array[4096] of flow_slot{ct_key, local u32, tag u64 (revision |
//	                             (flow_gen + flow_gen_dp + flow_close[index]) << 32), until
//	                             u64 (jiffies), dir, reply u8, pad [6]u8}:
//	                             not pinned (see "Flow cache" below)
//	membrane_events     ring buffer of event{timestamp u64, ifindex, endpoint_id,
//	                             local_identity, remote_identity, rule_id, len u32, sport,
//	                             dport, proxy_port u16, type (1 drop, 2 audit, 3 allow,
//	                             4 redirect), reason, direction, protocol, family, flags
//	                             (1 revalidated, 2 from proxy, 4 fragment) u8, saddr,
//	                             daddr [16]u8}
//
// # Pins and restarts
//
// Under PinDir: the maps, progs/ (the two programs) and links/ (tcx links
// "tcx_<ifindex>_<hook>", and for legacy tc a pinned program per filter as a
// marker, "tc_<ifindex>_<hook>"), and bridges/ ("tcx_<ifindex>" or
// "tc_<ifindex>" for membrane_bridge, whose program is progs/membrane_bridge).
// AttachBridge loads the bridge program anew each time and swaps it into an
// existing attachment, so the daemon calls it for every bridge after Open.
// Open adopts the maps when their layout and
// ABI match, loads the new programs and swaps them into every pinned
// attachment at once (tcx link update, tc filter replace). If a pinned map no
// longer matches (size changed in the config, new layout), the old map pins
// are removed and fresh maps created; the existing attachments keep running
// the old programs with the old maps until Attach is called for each
// interface, which the daemon does after it has filled the new maps — so
// enforcement never lapses. Close releases the Go objects and leaves pins and
// attachments in place (enforcement continues with no daemon); Cleanup removes
// every attachment, filter and pin this package made.
//
// # Go API (what the daemon calls)
//
//	dp, err := bpf.Open(bpf.Config{PinDir: ..., Attach: "auto", Logger: log})
//	br, _ := bpf.BridgeOf(ifindex)                          // the veth's master
//	dp.SetEndpoint(ifindex, bpf.Endpoint{ID: 7, Identity: 300, Flags: bpf.EnforceIngress|bpf.EnforceEgress, Bridge: br})
//	dp.IPCacheSync(map[netip.Prefix]policies.Identity{...}) // endpoints, host (1), model.CIDRs
//	dp.SyncPolicy(model, proxyPortOf)                       // per-identity atomic swap; bumps the revision
//	dp.ResyncPolicy(model, proxyPortOf)                     // same, after reading the maps back (periodic)
//	dp.Attach(ifindex)                                      // both hooks; idempotent
//	dp.AttachBridge(br)                                     // every managed bridge; idempotent
//	bpf.PrepareProxyPath(cg)                                // cg from SelfCgroup (zero if none); with proxy.DefaultRouting.Install, when L7 is on
//	dp.Events(ctx, func(ev bpf.Event) {...})                // or NewEventReader + Read
//	dp.Counters(); dp.GC(time.Now()); dp.Close() // or dp.Cleanup() on package removal
//	                                                        // (and bpf.RemoveProxyPath())
//
// The policy revision moves on by itself whenever a change can alter the
// verdict of an established flow: SyncPolicy changing an identity's entries,
// an ipcache prefix changing or going, an endpoint changing identity.
// SetRevision/BumpRevision exist for anything else.
//
// A full map is returned as an error wrapping ErrMapFull, never dropped.
//
// # Performance
//
// BenchmarkVerdict runs membrane_egress through BPF_PROG_TEST_RUN and reports
// the kernel's own ns/packet next to an empty program's (the test-run
// overhead) in the same run:
//
//	go test -p 1 -run '^$' -bench BenchmarkVerdict -benchtime 2000000x ./bpf/
//
// Every kernel function the program calls costs a return through the
// CPU's return-stack mitigation: on the 2-core Firecracker VM (AMD EPYC,
// spec_rstack_overflow "Safe RET", retpolines) where this was tuned, ten
// calls of bpf_get_prandom_u32 add 180 ns to an empty program, 18 ns per
// call (BenchmarkHelperCall measures it: go test -p 1 -run '^$' -bench
// BenchmarkHelperCall ./bpf/), and a hash map hit is two calls (the lookup and its memcmp), a miss
// one. Array and per-CPU array lookups, bpf_jiffies64 and direct packet
// access are inlined and cost no call. So the hot paths make no call:
//
// Flow cache (established flows). membrane_flow_cache is a per-CPU,
// direct-mapped copy of what the conntrack path decided for a packet tuple
// (on its interface, in its direction) that needs nothing but a pass. A hit
// counts the packet (ALLOW_ESTABLISHED or ALLOW_REPLY) and passes it. It is
// used only while the policy revision (which moves on any change that can
// alter a verdict: policy, ipcache, an endpoint's identity), the local
// identity and membrane_flow_gen (moved on by GC when it deletes entries,
// and by any change to an endpoint or to the verdict for unknown endpoints,
// so that established_fast below need not read the endpoint; the programs'
// own membrane_flow_gen_dp is added to it, moved on when a new flow that goes
// to the L7 proxy takes a tuple whose packets a slot, on any CPU, may pass
// as the replies of a flow the other way, and so is the close generation of
// the slot's index in membrane_flow_close, moved on at the indexes of a
// connection's two tuples when conntrack records a FIN or RST new to its
// entry, whose flow's later data or ACKs must reach conntrack: a close makes
// that connection's slots stale on every CPU, and those of the few flows
// that share an index with it, not the whole cache) are those it
// was filled under, and for at most 64 jiffies (64-640 ms,
// under the shortest lifetime, 1 s), after which the conntrack path runs
// again and refreshes the entry, so a slot never outlives its entry. Never
// for TCP packets with SYN, FIN or RST (state changes), the packets of a
// TCP side whose FIN was seen (its data may show the FIN forged), of a TCP
// flow whose RST was (its ACKs may show the RST forged), openers (a
// SYN, an echo request, whose tuple is that of the peer's replies) or
// fragments.
// Not pinned: a new program starts empty. The slot of a flow whose packets
// move between CPUs is just filled on each.
//
// A bare SYN is judged as a new connection without a conntrack lookup (a
// retransmitted SYN gets the same verdict again; a SYN on a closing tuple
// starts it over, as before).
//
// Inline tables (new flows). membrane_ipcache4 and membrane_policy4 are
// 4-way set-associative copies of the IPv4 exact ipcache entries and of the
// exact policy entries in plain arrays, read by the program with no call
// before the hash maps they copy. Userspace is the only writer, through a
// shared mapping (BPF_F_MMAPABLE) with atomic stores: an ipcache slot is one
// 64-bit word; a policy slot is written under a sequence count (odd while it
// changes; a reader that sees it odd or moved takes the hash instead). A slot
// is written after its entry is in the hash and cleared before the entry
// leaves it, so a hit is what the hash would answer; an entry whose set is
// full (or an IPv6 address) is left to the hash, and takes a freed slot at
// the end of the next sync that frees one; Open rebuilds both tables from the
// maps. The program's reads are only ordered on a machine that does not
// reorder loads with loads, so the tables are filled on amd64 only (elsewhere
// they stay empty and every lookup takes the hash).
//
// New flow (a bare SYN to an endpoint or host peer with an exact entry):
// endpoint, ipcache and policy all inline, no call, whatever the number of
// entries; other entries take membrane_policy_exact or the outer map and one
// or two trie lookups. Established flow: a flow cache hit. Packet headers are
// read with direct packet access; bpf_skb_load_bytes only for non-linear
// data and IPv6 extension headers.
//
// The established IPv4 TCP packet (no options, not a fragment, no SYN, FIN
// or RST) is tried first by established_fast, which reads its tuple from the
// packet into registers, checks the flow cache slot against them and passes
// it: no endpoint lookup, no copy of the tuple, no zeroed parse state. It takes the same branch handle() would take
// for the packet, and anything it does not serve goes through handle() from
// the start. New flows (a bare SYN) and the rest share a parser that reads
// the common packet (IPv4 without options, TCP, not a fragment) in place;
// every other packet takes the general parser.
//
// The programs are built for BPF ISA v3 (-mcpu=v3: 32-bit ALU and jumps,
// kernel 5.1 or later), which saves the zero-extension shifts v1 needs
// around every 32-bit value.
//
// On that VM, two runs of ten at the end of this work, with the empty
// program at 35-43 ns: new flow 58-95 ns (medians 69-82) for 10, 1000 and
// 10000 entries alike, established 44-58 ns (medians 49 and 54). Before
// established_fast, the endpoint-free slot check and v3 they were 68-115
// (medians 73-99) and 56-80 (median 65); before the flow cache and the
// inline tables 161-176 and 105-123 ns, and 294/367/363 and 205 ns before
// the first round of this work. The spread is the machine's (other guests):
// the empty program itself moves by 6 ns between runs.
//
// BenchmarkFlowCacheCloses measures what other connections' closes cost an
// established flow: its ACKs in batches of ten on one CPU while other
// connections open and close once every 10, 100 and 1000 of its packets,
// against no closes in the same run, with the share of its packets that
// took the conntrack path:
//
//	go test -p 1 -run '^$' -bench BenchmarkFlowCacheCloses -benchtime 200000x ./bpf/
//
// When every close made the whole cache stale (one generation for all
// slots), a close every 10 packets cost x1.18-1.31 (0.100 of the packets
// through conntrack, 44-48 ns/packet with no closes); with a close
// generation per slot index, x0.94-1.07 (0.00003 through conntrack, as many
// as the slot's 64-jiffy deadline runs out in the run), and 45-51 ns/packet
// with no closes (three runs of each, alternated, on that VM).
package bpf

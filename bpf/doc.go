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
// pass, reason neighbor, whatever the policy; other
// non-IP ethertypes drop (unsupported-l3); a truncated or invalid IPv4/IPv6
// header drops (malformed-l3), a truncated TCP/UDP/SCTP/ICMP header drops
// (malformed-l4); IPv6 extension headers are walked up to 8 deep (deeper:
// ipv6-ext-headers). The endpoint comes from the endpoints map by the skb's
// ifindex; an interface not in it is identity init (5) and is dropped
// (unknown-endpoint) unless Config.UnknownEndpoint is "allow", in which case
// init's policy judges it. A direction the endpoint does not enforce passes.
//
// Fragments: a first fragment is judged like any packet and leaves its ports
// in the fragments map (keyed by addresses, IP id and protocol); a later
// fragment takes those ports and so follows its flow (conntrack hit, or the
// same verdict). A later fragment whose first fragment was never seen drops
// with reason frag-no-flow.
//
// Conntrack: an LRU hash keyed by the 5-tuple plus the interface, so each end
// of a container-to-container flow keeps its own entry. A hit in the original
// or reply direction passes (established, reply); an ICMP error quoting a
// tracked flow passes (related). A bare TCP SYN and an ICMP echo request
// open flows and are never taken for replies. When the config map's policy revision differs
// from the revision stored in the entry, the flow is judged again as its first
// packet was; if the policy now denies it, the packet drops and the entry is
// deleted (events carry the revalidated flag). TCP entries follow SYN, FIN
// (both sides) and RST with their own lifetimes (Config.Lifetimes); GC removes
// expired entries, and an expired entry is never honoured.
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
// up the proxy's socket with bpf_skc_lookup_tcp (the established one for the
// tuple first, else the listener on the proxy port; the listener is bound to
// the wildcard address with IP_TRANSPARENT), bpf_sk_assigns it (failure:
// proxy-assign-failed; no socket: proxy-no-listener, both counted and
// reported with the bridge's ifindex) and makes the frame PACKET_HOST again.
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
// the source identity in the low 24 bits. membrane_ingress then takes the
// remote identity from the mark instead of the ipcache and never redirects the
// flow again. Identities >= 1<<24 (CIDR identities) do not fit; the proxy
// sends 0 and the ipcache decides.
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
//	                             the identifier in both), protocol u8, family u8, pad u16,
//	                             ifindex u32} -> ct_entry{expires u64 (CLOCK_MONOTONIC ns, coarse:
//	                             bpf_ktime_get_coarse_ns, a tick's resolution is plenty),
//	                             packets, bytes u64 (the first packet's: not counted per
//	                             packet, the shared entry stays clean), revision, rule_id, remote_identity u32,
//	                             proxy_port, policy_port u16, direction, state (1 syn,
//	                             2 established, 3 closing), flags u8 (1 audit, 2 from proxy,
//	                             4/8 FIN seen original/reply), pad [5]u8}
//	membrane_frag       LRU hash frag_key{saddr, daddr [16]u8, id u32, protocol, family u8,
//	                             pad u16} -> frag_value{sport, dport u16 NBO, policy_port u16, pad}
//	membrane_config     array[1] config{abi, revision, flags (1 unknown endpoint allow,
//	                             2 no conntrack insert: benchmarks only),
//	                             allow_sample (1 in N new allowed flows reported; 0 none),
//	                             lifetime_tcp, lifetime_syn, lifetime_nontcp, lifetime_close
//	                             (seconds)} — all u32
//	membrane_counters   per-CPU array, slot reason*2 + direction -> counter{packets, bytes u64};
//	                             slot 48 counts events lost to a full ring buffer
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
//	bpf.PrepareProxyPath()                                  // with proxy.DefaultRouting.Install, when L7 is on
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
// On a kernel with retpolines and return thunks (most VMs) every helper call
// and every non-inlined map lookup costs tens of ns, so the hot paths count
// them. Established flow: endpoint (array lookup, inlined), one conntrack hash
// hit, the coarse clock (read once per jiffy and CPU: inlined bpf_jiffies64
// and a per-CPU memo), a per-CPU counter (inlined) — no ipcache, policy or
// ring buffer. New flow (a bare SYN): endpoint, one conntrack miss (openers
// never look for a reply entry), one ipcache hash hit for endpoint and host
// peers (the LPM trie only for shorter prefixes), one exact policy hash hit
// for exact-remote exact-port entries, so the cost does not grow with the
// number of entries; other entries take the outer map and one or two trie
// lookups. Packet headers are read with direct packet access;
// bpf_skb_load_bytes only for non-linear data and IPv6 extension headers.
//
// On the 2-core Firecracker VM (kernel 6.18, retpolines) where this was
// tuned, with the empty program at ~40 ns: new flow ~200 ns for 10, 1000 and
// 10000 entries alike, established ~140 ns (from 294/367/363 and 205). There
// a single hash lookup costs 30-45 ns, and a new flow needs three (conntrack,
// ipcache, policy), so ~100 ns new / ~60 ns established is out of reach on
// such a machine without dropping a lookup.
package bpf

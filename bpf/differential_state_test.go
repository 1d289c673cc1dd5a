package bpf

import (
	"flag"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/membrane-fw/membrane/internal/policygen"
	"github.com/membrane-fw/membrane/policies"
)

var diffFlowWorlds = flag.Int("diff.flowworlds", 120, "number of random worlds (each a sequence of packets and policy changes) of TestDifferentialStateful")

// The stateful half of the differential test: where TestDifferential
// judges first packets alone (and forgets each flow), this one keeps the
// conntrack entries and sends sequences: the first packets of random flows
// between endpoints, the host, world and init addresses, their later
// packets both ways (TCP SYN, SYN-ACK, ACK with and without data, FIN, RST,
// a retransmitted SYN; UDP, SCTP, ICMP echo, timestamp and other types,
// GRE), a reply before any packet of the original direction, ICMP errors
// quoting a packet of either direction (whole, or its first 8 bytes) to or
// from the endpoint (some sent to the quoted packet's destination, related
// to nothing), first fragments whose later fragment comes some steps on,
// some flows reaching their receiver through a foreign device (decision
// 56), and between them policy changes (a new random set,
// a rule deleted or added, an endpoint relabelled to another identity, other
// audit and enforcement settings). Verdicts are drop, pass or redirect (to
// the L7 proxy). The expected verdict of each packet comes from the
// reference evaluator and the specification's semantics 6 (replies and
// related errors of an allowed connection pass; after a change, a
// connection the new set denies is cut at its next packet and one it allows
// goes on), kept per end of each connection by sModel below.

// sEntry is a connection as the model tracks it at one end: the
// connection it was judged as when its first packet passed, and the
// policy generation it was last judged under.
type sEntry struct {
	conn policies.Connection
	dir  policies.Direction
	gen  int
	// redirect: its packets in the original direction go to the L7 proxy.
	redirect bool
}

// sKey names a tracked connection at one end: the interface, the tuple of
// the packet that opened it (pkt.ctKey) and that packet's direction.
type sKey struct {
	k   datapathCtKey
	dir policies.Direction
}

// sModel is what the specification says the conntrack of every end holds.
type sModel struct {
	set     *policies.Set
	env     *policies.Env
	gen     int
	entries map[sKey]*sEntry
	// frags: the first fragments that passed (decision 65), by
	// interface, direction and datagram, as their later fragments are
	// judged: with the first one's protocol and ports.
	frags map[sFragKey]pkt
}

type sFragKey struct {
	ifx      int
	dir      policies.Direction
	src, dst netip.Addr
	id       uint32
}

// sLater is a later fragment not sent yet.
type sLater struct {
	local   int
	dir     policies.Direction
	p       pkt
	foreign bool
}

// first notes a first fragment's verdict; later judges a later fragment:
// it follows its first fragment, at the same interface and in the same
// direction, and only where that one passed (else frag-no-flow).
func (m *sModel) first(ifx int, dir policies.Direction, p pkt, verdict string) {
	if verdict != "drop" {
		t := p
		t.tcpFlags, t.payload, t.moreFrags = 0, nil, false
		m.frags[sFragKey{ifx, dir, p.src, p.dst, p.fragID}] = t
	}
}

func (m *sModel) later(ifx int, dir policies.Direction, p pkt, foreign bool) (string, string) {
	t, ok := m.frags[sFragKey{ifx, dir, p.src, p.dst, p.fragID}]
	if !ok {
		return "drop", "later fragment of no first fragment that passed"
	}
	v, why := m.judge(ifx, dir, t, nil, foreign)
	return v, "later fragment: " + why
}

func swapKey(k datapathCtKey) datapathCtKey {
	r := k
	r.Saddr, r.Daddr = k.Daddr, k.Saddr
	r.Sport, r.Dport = k.Dport, k.Sport
	return r
}

func other(d policies.Direction) policies.Direction {
	if d == policies.Egress {
		return policies.Ingress
	}
	return policies.Egress
}

// pktConn is the connection a packet opens when it is no packet of a
// tracked one.
func pktConn(p pkt) policies.Connection {
	peer := func(a netip.Addr) policies.Peer {
		if a == dInit4 || a == dInit6 {
			return policies.Peer{Entity: policies.EntityInit}
		}
		return policies.Peer{IP: a}
	}
	c := policies.Connection{From: peer(p.src), To: peer(p.dst), Proto: policies.Proto(p.proto)}
	switch c.Proto {
	case policies.ProtoICMP, policies.ProtoICMPv6:
		c.ICMPType = p.icmpType
	case policies.ProtoTCP, policies.ProtoUDP, policies.ProtoSCTP:
		c.Port = p.dport
	}
	return c
}

// verdict is the evaluator's verdict of c at the end that judges it in
// dir: drop, pass or redirect.
func (m *sModel) verdict(c policies.Connection, dir policies.Direction) string {
	res := m.set.Evaluate(m.env, c)
	if dir == policies.Egress {
		return expectedEnd(res.Egress)
	}
	return expectedEnd(res.Ingress)
}

func isICMPError(p pkt) bool {
	switch policies.Proto(p.proto) {
	case policies.ProtoICMP:
		return p.icmpType == 3 || p.icmpType == 11 || p.icmpType == 12
	case policies.ProtoICMPv6:
		return p.icmpType >= 1 && p.icmpType <= 4
	}
	return false
}

// rejudge judges a tracked connection again if the policy moved on since;
// a connection now denied is forgotten (cut).
func (m *sModel) rejudge(k sKey, e *sEntry) string {
	if e.gen == m.gen {
		return "pass"
	}
	v := m.verdict(e.conn, e.dir)
	if v == "drop" {
		delete(m.entries, k)
		return "drop"
	}
	e.gen, e.redirect = m.gen, v == "redirect"
	return "pass"
}

// judge is the model's verdict for packet p at interface ifx in direction
// dir; quote is the packet an ICMP error quotes (nil otherwise). It
// updates the model as the specification's state rules say.
//
// foreign: the packet came in to the endpoint through a device that is no
// endpoint's, its bridge or the host stack (policy decision 56): a source
// address of an endpoint then stands for init.
func (m *sModel) judge(ifx int, dir policies.Direction, p pkt, quote *pkt, foreign bool) (string, string) {
	k := p.ctKey(ifx)
	syn := p.proto == 6 && p.tcpFlags&(tcpSYN|tcpACK) == tcpSYN
	echoReq := (p.proto == 1 && p.icmpType == 8) || (p.proto == 58 && p.icmpType == 128)
	// A bare SYN opens a connection (a retransmitted one is judged as
	// its first packet was); an echo request is never a reply.
	if !syn {
		if e := m.entries[sKey{k, dir}]; e != nil {
			v := m.rejudge(sKey{k, dir}, e)
			if v == "pass" && e.redirect {
				v = "redirect"
			}
			return v, "packet of a tracked connection"
		}
		if !echoReq {
			rk := sKey{swapKey(k), other(dir)}
			if e := m.entries[rk]; e != nil {
				return m.rejudge(rk, e), "reply of a tracked connection"
			}
		}
	}
	if quote != nil && isICMPError(p) && quote.src == p.dst {
		qk := quote.ctKey(ifx)
		for _, rk := range []sKey{{qk, policies.Egress}, {qk, policies.Ingress}, {swapKey(qk), policies.Egress}, {swapKey(qk), policies.Ingress}} {
			if e := m.entries[rk]; e != nil && m.rejudge(rk, e) == "pass" {
				return "pass", "error related to a tracked connection"
			}
		}
	}
	c := pktConn(p)
	if foreign { // (from an endpoint's address)
		c.From = policies.Peer{Entity: policies.EntityInit}
	}
	v := m.verdict(c, dir)
	// The reply of a request/reply pair other than echo, sent unasked,
	// leaves no entry: it would let the peer's requests in as its replies.
	pairReply := (p.proto == 1 && (p.icmpType == 14 || p.icmpType == 16 || p.icmpType == 18)) ||
		(p.proto == 58 && p.icmpType == 140)
	if v != "drop" && !pairReply {
		m.entries[sKey{k, dir}] = &sEntry{conn: c, dir: dir, gen: m.gen, redirect: v == "redirect"}
	}
	return v, "new connection"
}

// sFlow is one connection of a world: its first packet.
type sFlow struct {
	c      dConn
	first  pkt
	synAck bool // the reply side has answered (TCP: SYN-ACK sent)
	// foreign: the packets of its original direction reach the receiver
	// through a device that is no endpoint's (decision 56).
	foreign bool
}

type sRunner struct {
	dRunner
	w      dWorld
	spec   policygen.Spec
	model  *sModel
	log    []string
	sport  uint16
	fragID uint32
}

// apply writes the world's current policy into the maps as the daemon
// does on a change (ipcache, policy, then endpoints), without touching
// conntrack.
func (s *sRunner) apply() error {
	set := s.spec.Build()
	m, err := policies.Compile(set, s.w.ids, s.w.opts)
	if err != nil {
		return fmt.Errorf("compile: %w", err)
	}
	dp := s.h.dp
	if err := dp.IPCacheSync(ipcacheOf(m, s.w)); err != nil {
		return err
	}
	if _, err := dp.SyncPolicy(m, func(l7 uint32) uint16 { return 15000 + uint16(l7) }); err != nil {
		return err
	}
	for i, il := range s.w.ids {
		ep := Endpoint{ID: uint32(i + 1), Identity: il.Identity, Flags: endpointFlags(s.w.env, il.Labels), Bridge: s.h.ifs[0]}
		if err := dp.SetEndpoint(s.h.ifs[i], ep); err != nil {
			return err
		}
	}
	s.model.set = set
	s.model.gen++
	return nil
}

// reset starts a world: no endpoints, no conntrack entries.
func (s *sRunner) reset() error {
	dp := s.h.dp
	eps, err := dp.Endpoints()
	if err != nil {
		return err
	}
	for idx := range eps {
		if err := dp.DeleteEndpoint(idx); err != nil {
			return err
		}
	}
	var k datapathCtKey
	var keys []datapathCtKey
	it := dp.objs.MembraneCt.Iterate()
	var v datapathCtEntry
	for it.Next(&k, &v) {
		keys = append(keys, k)
	}
	if err := it.Err(); err != nil {
		return err
	}
	for _, k := range keys {
		if err := dp.objs.MembraneCt.Delete(&k); err != nil {
			return err
		}
	}
	s.model = &sModel{env: s.w.env, entries: map[sKey]*sEntry{}, frags: map[sFragKey]pkt{}}
	return s.apply()
}

func (s *sRunner) newFlow(r *rand.Rand) sFlow {
	var c dConn
	for {
		// No IPv4-mapped addresses (a reply would come from one, which
		// drops as malformed-l3), extension headers or fragments here.
		c = genConn(r, s.w)
		if c.from != c.to && !c.mapped {
			break
		}
	}
	c.ext, c.ah, c.frag = nil, 0, false
	s.sport++
	if s.sport < 40000 || s.sport > 60000 {
		s.sport = 40000
	}
	if c.proto == policies.ProtoICMP && r.IntN(3) == 0 {
		c.icmpType = 13 // a request/reply pair other than echo
	}
	if c.proto == policies.ProtoICMP && r.IntN(2) == 0 {
		c.icmpType = 8
	}
	if c.proto == policies.ProtoICMPv6 && r.IntN(2) == 0 {
		c.icmpType = 128
	}
	p := pkt{src: s.w.addrOf(c.from, c), dst: s.w.addrOf(c.to, c), proto: uint8(c.proto), sport: s.sport, dport: c.port,
		icmpType: c.icmpType, icmpID: s.sport}
	if c.proto == policies.ProtoTCP {
		p.tcpFlags = tcpSYN
	}
	return sFlow{c: c, first: p, foreign: c.from >= 0 && c.to >= 0 && r.IntN(10) == 0}
}

// replyOf is the answer to p: addresses and ports swapped, an echo
// request's or timestamp request's reply type.
func replyOf(p pkt) pkt {
	r := p.reverse()
	switch {
	case p.proto == 1 && p.icmpType == 13:
		r.icmpType = 14
	}
	return r
}

// packet draws a packet of flow f: a later packet of its original
// direction or one of its reply direction, with TCP flags that move its
// state.
func packetOf(r *rand.Rand, f *sFlow) (p pkt, reply bool) {
	p = f.first
	reply = r.IntN(2) == 0
	if reply {
		p = replyOf(p)
	}
	if p.proto != 6 {
		if r.IntN(3) == 0 {
			p.payload = []byte("data")
		}
		return p, reply
	}
	switch n := r.IntN(20); {
	case n == 0:
		p.tcpFlags = tcpRST
	case n == 1:
		p.tcpFlags = tcpFIN | tcpACK
	case n == 2 && !reply:
		p.tcpFlags = tcpSYN // retransmitted SYN
	case reply && !f.synAck:
		p.tcpFlags = tcpSYN | tcpACK
		f.synAck = true
	default:
		p.tcpFlags = tcpACK
		if r.IntN(2) == 0 {
			p.payload = []byte("data")
		}
	}
	return p, reply
}

// errorAbout draws an ICMP error quoting a packet of flow f (of any
// protocol, the whole packet or only the 8 bytes after its IP header that
// RFC 792 asks for), sent to the quoted packet's source (one in eight:
// to its destination) through the link of endpoint local.
func (s *sRunner) errorAbout(r *rand.Rand, f *sFlow, local int) (pkt, pkt) {
	q := f.first
	if q.proto == 6 {
		q.tcpFlags = tcpACK
	}
	if r.IntN(2) == 0 {
		q = replyOf(q)
	}
	localAddr := s.w.addrOf(local, f.c)
	e := pkt{dst: q.src, proto: 1, icmpType: policygen.Pick(r, []uint8{3, 11, 12})}
	if q.src.Is6() {
		e.proto, e.icmpType = 58, policygen.Pick(r, []uint8{1, 2, 3, 4})
	}
	switch {
	case q.src == localAddr:
		// to the endpoint: from its peer or from a router on the way
		e.src = q.dst
		if r.IntN(2) == 0 {
			e.src = policygen.Pick(r, dWorld4)
			if q.src.Is6() {
				e.src = policygen.Pick(r, dWorld6)
			}
		}
	default:
		// from the endpoint, about a packet it received
		e.src = localAddr
	}
	if r.IntN(8) == 0 {
		// quoting the other way: not sent to the quoted packet's
		// source, so related to nothing (judged by its type)
		q = replyOf(q)
	}
	e.payload = q.ip()
	if r.IntN(3) == 0 {
		n := 20 + 8
		if q.src.Is6() {
			n = 40 + 8
		}
		e.payload = e.payload[:min(n, len(e.payload))]
	}
	return e, q
}

func (s *sRunner) run(prog *ebpf.Program, ifindex, inIfindex int, p pkt) (string, error) {
	ret, err := prog.Run(&ebpf.RunOptions{Data: p.bytes(), Context: skbCtx{Ifindex: uint32(ifindex), IngressIfindex: uint32(inIfindex)}})
	if err != nil {
		return "", err
	}
	return verdictName(ret), nil
}

func describe(p pkt) string {
	s := fmt.Sprintf("%v:%d -> %v:%d proto %d", p.src, p.sport, p.dst, p.dport, p.proto)
	if p.proto == 6 {
		s += fmt.Sprintf(" flags %#x data %v", p.tcpFlags, len(p.payload) > 0)
	}
	if p.proto == 1 || p.proto == 58 {
		s += fmt.Sprintf(" type %d id %d", p.icmpType, p.icmpID)
	}
	return s
}

// change moves the world on: another policy set, one rule fewer or more,
// an endpoint with other labels (so another identity), or other audit and
// enforcement settings (a daemon restarted with another configuration, to
// or from enforcement "never" too, under which connections are tracked:
// decision 75).
func (s *sRunner) change(r *rand.Rand) string {
	if r.IntN(12) == 0 {
		env := *s.w.env
		env.Enforcement, env.Audit, env.AuditSelector = "", false, nil
		policygen.Settings(r, &env)
		s.w.env, s.model.env = &env, &env
		s.w.opts = policies.CompileOptions{Enforcement: env.Enforcement, Audit: env.Audit, AuditSelector: env.AuditSelector}
		return fmt.Sprintf("settings: enforcement=%q audit=%v audit_selector=%v", env.Enforcement, env.Audit, env.AuditSelector)
	}
	switch n := r.IntN(8); {
	case n == 0:
		s.spec = policygen.Generate(r, dGen)
		return "new policy set"
	case n <= 3:
		// delete one rule or policy
		var cands []policygen.Spec
		for i, p := range s.spec.Policies {
			c := clonePolicy(s.spec)
			c.Policies = slices.Delete(c.Policies, i, i+1)
			cands = append(cands, c)
			for j := range p.Rules {
				c := clonePolicy(s.spec)
				c.Policies[i].Rules = slices.Delete(c.Policies[i].Rules, j, j+1)
				cands = append(cands, c)
			}
		}
		if len(cands) > 0 {
			s.spec = policygen.Pick(r, cands)
			return "one rule or policy deleted"
		}
		fallthrough
	case n <= 6:
		c := clonePolicy(s.spec)
		if len(c.Policies) == 0 || r.IntN(4) == 0 {
			c.Policies = append(c.Policies, policygen.Policy{Selector: policygen.Selector(r), DefaultDeny: r.IntN(5) > 0})
		}
		i := r.IntN(len(c.Policies))
		c.Policies[i].Rules = append(c.Policies[i].Rules, policygen.GenerateRule(r, dGen))
		s.spec = c
		return "one rule added"
	default:
		i := r.IntN(len(s.w.ids))
		l := policygen.Labels(r)
		for _, il := range s.w.ids {
			if policies.FormatLabels(il.Labels) == policies.FormatLabels(l) {
				return "no change"
			}
		}
		ids := slices.Clone(s.w.ids)
		max := policies.Identity(0)
		for _, il := range ids {
			max = Max(max, il.Identity)
		}
		ids[i] = policies.IdentityLabels{Identity: max + 7, Labels: l}
		s.w.ids = ids
		env := *s.w.env
		env.Endpoints = slices.Clone(env.Endpoints)
		env.Endpoints[i].Labels = l
		s.w.env = &env
		s.model.env = &env
		return fmt.Sprintf("endpoint %d relabelled %s (identity %d)", i, policies.FormatLabels(l), max+7)
	}
}

// Max returns the larger of two identities.
func Max(a, b policies.Identity) policies.Identity {
	if a > b {
		return a
	}
	return b
}

func clonePolicy(g policygen.Spec) policygen.Spec {
	c := policygen.Spec{Policies: slices.Clone(g.Policies)}
	for i := range c.Policies {
		c.Policies[i].Rules = slices.Clone(c.Policies[i].Rules)
	}
	return c
}

func TestDifferentialStateful(t *testing.T) {
	h := newHarness(t, 6, Config{MaxConntrack: 8192})
	s := &sRunner{dRunner: dRunner{h: h}}
	r := rand.New(rand.NewPCG(*diffSeed, 3))
	packets, changes, rejudged := 0, 0, 0
	for world := 0; world < *diffFlowWorlds; world++ {
		s.spec = policygen.Generate(r, dGen)
		s.w = genWorld(r)
		s.log = s.log[:0]
		if err := s.reset(); err != nil {
			t.Fatal(err)
		}
		s.log = append(s.log, "policy:\n"+s.spec.String())
		var flows []*sFlow
		var laters []sLater
		fail := ""
		err := h.ns.Do(func() error {
			for step := 0; step < 300 && fail == ""; step++ {
				switch n := r.IntN(40); {
				case n == 0:
					what := s.change(r)
					if err := s.apply(); err != nil {
						return err
					}
					changes++
					s.log = append(s.log, "change: "+what+"\n"+s.spec.String())
					continue
				case n < 8 || len(flows) == 0:
					f := s.newFlow(r)
					flows = append(flows, &f)
				}
				if len(laters) > 0 && r.IntN(8) == 0 {
					// a later fragment, maybe after a policy change
					i := r.IntN(len(laters))
					l := laters[i]
					laters = slices.Delete(laters, i, i+1)
					prog := h.dp.objs.MembraneEgress
					if l.dir == policies.Ingress {
						prog = h.dp.objs.MembraneIngress
					}
					inIf := 0
					if l.foreign {
						inIf = 1
					}
					want, why := s.model.later(h.ifs[l.local], l.dir, l.p, l.foreign)
					got, err := s.run(prog, h.ifs[l.local], inIf, l.p)
					if err != nil {
						return err
					}
					packets++
					line := fmt.Sprintf("%v at endpoint %d: %s, later fragment %d: BPF %s, model %s (%s)", l.dir, l.local, describe(l.p), l.p.fragID, got, want, why)
					s.log = append(s.log, line)
					if got != want {
						fail = line
					}
					continue
				}
				f := policygen.Pick(r, flows)
				// the end: the sender's (egress) or the receiver's (ingress)
				var ends []int
				if f.c.from >= 0 {
					ends = append(ends, f.c.from)
				}
				if f.c.to >= 0 {
					ends = append(ends, f.c.to)
				}
				local := policygen.Pick(r, ends)
				var p pkt
				var quote *pkt
				if r.IntN(12) == 0 {
					e, q := s.errorAbout(r, f, local)
					p, quote = e, &q
				} else if r.IntN(4) == 0 {
					p = f.first
				} else {
					p, _ = packetOf(r, f)
				}
				localAddr := s.w.addrOf(local, f.c)
				dir := policies.Egress
				prog := h.dp.objs.MembraneEgress
				if p.dst == localAddr {
					dir, prog = policies.Ingress, h.dp.objs.MembraneIngress
				}
				// the flow's packets to its receiver through a foreign
				// device: the namespace's loopback
				foreign := f.foreign && quote == nil && dir == policies.Ingress && p.src == s.w.addrOf(f.c.from, f.c)
				inIf := 0
				if foreign {
					inIf = 1
				}
				frag := quote == nil && r.IntN(10) == 0
				if frag {
					s.fragID++
					p.fragID, p.moreFrags, p.payload = s.fragID, true, make([]byte, 16)
				}
				want, why := s.model.judge(h.ifs[local], dir, p, quote, foreign)
				got, err := s.run(prog, h.ifs[local], inIf, p)
				if err != nil {
					return err
				}
				if frag {
					s.model.first(h.ifs[local], dir, p, want)
					l := p
					l.fragOff, l.moreFrags = 3, false
					laters = append(laters, sLater{local: local, dir: dir, p: l, foreign: foreign})
					why += fmt.Sprintf(", first fragment %d", p.fragID)
				}
				packets++
				if why != "new connection" {
					rejudged++
				}
				line := fmt.Sprintf("%v at endpoint %d: %s: BPF %s, model %s (%s)", dir, local, describe(p), got, want, why)
				if foreign {
					line += " (through a foreign device)"
				}
				if quote != nil {
					line += " quoting " + describe(*quote)
				}
				s.log = append(s.log, line)
				if got != want {
					fail = line
				}
			}
			return nil
		})
		if err != nil {
			t.Fatalf("world %d: %v", world, err)
		}
		if fail != "" {
			tail := s.log
			if len(tail) > 60 {
				tail = append([]string{s.log[0]}, tail[len(tail)-60:]...)
			}
			t.Fatalf("world %d (seed %d): %s\nidentities %v enforcement=%q audit=%v audit_selector=%v\nsequence (last steps):\n%s",
				world, *diffSeed, fail, s.w.ids, s.w.env.Enforcement, s.w.env.Audit, s.w.env.AuditSelector, strings.Join(tail, "\n"))
		}
	}
	t.Logf("%d packets over %d worlds with %d policy changes agree (%d judged as packets of tracked connections) (seed %d)",
		packets, *diffFlowWorlds, changes, rejudged, *diffSeed)
}

package policies

// The semantics table: every numbered rule of the language's "Semantics"
// section, as policy files plus expected verdicts, in testdata/semantics/.
// Each directory there is one policy set (its *.hcl files, loaded with Load)
// and a file named "cases" holding the table:
//
//	# comment
//	env enforcement=always audit=true audit_selector=app=web
//	endpoint NAME LABELS ADDR...        an Env endpoint (labels "k=v,...", or {} for none)
//	hostaddr ADDR                       an address of the host
//	case FROM TO [L4] [http METHOD PATH [host=H] [header=K:V]...] => VERDICT [egress=V] [ingress=V] [l7=proxy|none] [http=allowed|403] [rules=POLICY/BLOCK,...]
//
// FROM and TO are "k=v,..." (a managed endpoint with those labels), {} (an
// endpoint without labels), @host, @world, @init, or ip:ADDR. L4 is
// PORT/PROTO, icmp:TYPE, icmpv6:TYPE or absent (no protocol known).
// rules= lists the matched rules exactly (egress end first, "-" for none).
// Every case is also checked against Compile + Model.Verdict.

import (
	"bufio"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

type semCase struct {
	line int
	text string
	env  *Env
	conn Connection
	want Verdict
	exp  map[string]string
}

func parseSemPeer(s string) (Peer, error) {
	switch {
	case s == "{}":
		return Peer{Labels: Labels{}}, nil
	case strings.HasPrefix(s, "@"):
		return Peer{Entity: Entity(s[1:])}, nil
	case strings.HasPrefix(s, "ip:"):
		a, err := netip.ParseAddr(s[3:])
		return Peer{IP: a}, err
	}
	l, err := ParseLabels(s)
	return Peer{Labels: l}, err
}

func parseSemL4(s string, c *Connection) error {
	switch {
	case strings.HasPrefix(s, "icmp:"), strings.HasPrefix(s, "icmpv6:"):
		c.Proto = ProtoICMP
		if strings.HasPrefix(s, "icmpv6:") {
			c.Proto = ProtoICMPv6
		}
		n, err := strconv.ParseUint(s[strings.Index(s, ":")+1:], 10, 8)
		c.ICMPType = uint8(n)
		return err
	}
	port, proto, ok := strings.Cut(s, "/")
	if !ok {
		return fmt.Errorf("bad L4 %q", s)
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return err
	}
	c.Port = uint16(n)
	c.Proto = map[string]Proto{"tcp": ProtoTCP, "udp": ProtoUDP, "sctp": ProtoSCTP}[proto]
	if c.Proto == 0 {
		return fmt.Errorf("bad protocol %q", proto)
	}
	return nil
}

func loadSemCases(t *testing.T, path string) []semCase {
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	env := &Env{}
	var out []semCase
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if i := strings.Index(line, "#"); i >= 0 {
			line = strings.TrimSpace(line[:i])
		}
		if line == "" {
			continue
		}
		fail := func(format string, args ...any) {
			t.Fatalf("%s:%d: %s", path, n, fmt.Sprintf(format, args...))
		}
		fields := strings.Fields(line)
		switch fields[0] {
		case "env":
			ne := *env
			ne.Enforcement, ne.Audit, ne.AuditSelector = "", false, nil
			for _, kv := range fields[1:] {
				k, v, _ := strings.Cut(kv, "=")
				switch k {
				case "enforcement":
					ne.Enforcement = v
				case "audit":
					ne.Audit = v == "true"
				case "audit_selector":
					s, err := ParseSelector(v)
					if err != nil {
						fail("%v", err)
					}
					ne.AuditSelector = &s
				default:
					fail("unknown env setting %q", k)
				}
			}
			env = &ne
		case "endpoint":
			if len(fields) < 3 {
				fail("endpoint NAME LABELS ADDR...")
			}
			p, err := parseSemPeer(fields[2])
			if err != nil || p.Labels == nil {
				fail("bad labels %q: %v", fields[2], err)
			}
			ep := Endpoint{Name: fields[1], Labels: p.Labels}
			for _, a := range fields[3:] {
				ep.Addrs = append(ep.Addrs, netip.MustParseAddr(a))
			}
			ne := *env
			ne.Endpoints = append(slices.Clone(env.Endpoints), ep)
			env = &ne
		case "hostaddr":
			ne := *env
			ne.HostAddrs = append(slices.Clone(env.HostAddrs), netip.MustParseAddr(fields[1]))
			env = &ne
		case "case":
			c := semCase{line: n, text: line, env: env, exp: map[string]string{}}
			arrow := slices.Index(fields, "=>")
			if arrow < 3 || arrow == len(fields)-1 {
				fail("case FROM TO [L4] [http ...] => VERDICT ...")
			}
			var err error
			if c.conn.From, err = parseSemPeer(fields[1]); err != nil {
				fail("from: %v", err)
			}
			if c.conn.To, err = parseSemPeer(fields[2]); err != nil {
				fail("to: %v", err)
			}
			rest := fields[3:arrow]
			if len(rest) > 0 && rest[0] != "http" {
				if err := parseSemL4(rest[0], &c.conn); err != nil {
					fail("%v", err)
				}
				rest = rest[1:]
			}
			if len(rest) > 0 {
				if rest[0] != "http" || len(rest) < 3 {
					fail("http METHOD PATH [host=H] [header=K:V]...")
				}
				req := &HTTPRequest{Method: rest[1], Path: rest[2], Headers: map[string]string{}}
				for _, kv := range rest[3:] {
					k, v, _ := strings.Cut(kv, "=")
					switch k {
					case "host":
						req.Host = v
					case "header":
						hk, hv, _ := strings.Cut(v, ":")
						req.Headers[hk] = hv
					default:
						fail("unknown http attribute %q", k)
					}
				}
				c.conn.HTTP = req
			}
			c.want = Verdict(fields[arrow+1])
			for _, kv := range fields[arrow+2:] {
				k, v, ok := strings.Cut(kv, "=")
				if !ok {
					fail("expectation %q is not key=value", kv)
				}
				c.exp[k] = v
			}
			if err := c.conn.Check(); err != nil {
				fail("%v", err)
			}
			out = append(out, c)
		default:
			fail("unknown line kind %q", fields[0])
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestSemanticsTable(t *testing.T) {
	dirs, err := filepath.Glob("testdata/semantics/*")
	if err != nil {
		t.Fatal(err)
	}
	total := 0
	for _, dir := range dirs {
		if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
			continue
		}
		t.Run(filepath.Base(dir), func(t *testing.T) {
			set, rep := Load(dir)
			if err := rep.Err(); err != nil {
				t.Fatalf("loading %s: %v", dir, err)
			}
			cases := loadSemCases(t, filepath.Join(dir, "cases"))
			if len(cases) == 0 {
				t.Fatalf("%s/cases has no case", dir)
			}
			total += len(cases)
			for _, c := range cases {
				where := fmt.Sprintf("%s/cases:%d: %s", dir, c.line, c.text)
				res := set.Evaluate(c.env, c.conn)
				checkSemCase(t, where, c, res)
				checkSemModel(t, where, set, c, res)
			}
		})
	}
	t.Logf("%d semantics cases", total)
	if total < 70 {
		t.Errorf("the semantics table holds %d cases; it should cover every rule with at least 70", total)
	}
}

func checkSemCase(t *testing.T, where string, c semCase, res Result) {
	t.Helper()
	if res.Verdict != c.want {
		t.Errorf("%s\n  verdict %s, want %s\n  egress %+v\n  ingress %+v", where, res.Verdict, c.want, res.Egress, res.Ingress)
		return
	}
	for k, v := range c.exp {
		var got string
		switch k {
		case "egress":
			got = string(res.Egress.Verdict)
		case "ingress":
			got = string(res.Ingress.Verdict)
		case "l7":
			got = "none"
			if res.L7 != nil && res.L7.Redirect {
				got = "proxy"
			}
		case "http":
			got = "-"
			if res.L7 != nil && res.L7.HTTP != nil {
				got = res.L7.HTTP.Verdict
			}
		case "rules":
			var names []string
			for _, m := range res.Matched() {
				names = append(names, m.Policy+"/"+m.Block)
			}
			got = strings.Join(names, ",")
			if got == "" {
				got = "-"
			}
		case "egress_dd", "ingress_dd":
			e := res.Egress
			if k == "ingress_dd" {
				e = res.Ingress
			}
			got = strconv.FormatBool(e.DefaultDeny)
		default:
			t.Fatalf("%s: unknown expectation %q", where, k)
		}
		if got != v {
			t.Errorf("%s\n  %s=%s, want %s (result %+v)", where, k, got, v, res)
		}
	}
}

// checkSemModel compiles the set for the case's endpoints and checks that the
// model gives each end the evaluator's verdict.
func checkSemModel(t *testing.T, where string, set *Set, c semCase, res Result) {
	t.Helper()
	w := genWorld{env: c.env}
	addID := func(l Labels) {
		for _, il := range w.ids {
			if FormatLabels(il.Labels) == FormatLabels(l) {
				return
			}
		}
		w.ids = append(w.ids, IdentityLabels{Identity: FirstAllocated + Identity(len(w.ids)), Labels: l})
	}
	for _, ep := range c.env.Endpoints {
		addID(ep.Labels)
	}
	for _, p := range []Peer{c.conn.From, c.conn.To} {
		if p.Labels != nil {
			addID(p.Labels)
		}
	}
	m, err := Compile(set, w.ids, CompileOptions{Enforcement: c.env.Enforcement, Audit: c.env.Audit, AuditSelector: c.env.AuditSelector})
	if err != nil {
		t.Fatalf("%s: compile: %v", where, err)
	}
	if msg := diffConn(set, m, w, c.conn); msg != "" {
		t.Errorf("%s\n  compiled model disagrees: %s", where, msg)
	}
}

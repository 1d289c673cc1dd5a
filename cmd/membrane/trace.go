package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/membrane-fw/membrane/policies"
	"github.com/membrane-fw/membrane/runtime/endpoint"
	"github.com/spf13/cobra"
)

// traceQuery is one `policy trace` question as the flags give it. Its fields
// are those of daemon/api.TraceRequest, so the daemon side converts it with
// api.TraceRequest(q).
type traceQuery struct {
	FromContainer string
	FromLabels    map[string]string
	FromEntity    string
	FromIP        string
	ToContainer   string
	ToLabels      map[string]string
	ToEntity      string
	ToIP          string
	Proto         string // "" (not given), tcp, udp, sctp, icmp, icmpv6
	Port          uint16
	ICMPType      *uint8
	HTTPMethod    string
	HTTPPath      string
	HTTPHost      string
	HTTPHeaders   map[string]string
}

// liveTrace asks a running membraned to evaluate q against its live state
// (enforced set, endpoints, host addresses, enforcement and audit settings).
// cmd is the trace command (for --socket and its context). It is traceLive;
// tests replace it with a stand-in, or with nil: no daemon to reach.
var liveTrace = traceLive

type traceOpts struct {
	policies []string
	format   string
	live     bool

	fromLabels, fromEntity, fromIP, fromContainer string
	toLabels, toEntity, toIP, toContainer         string
	// given tells which of the peer flags the command line holds, even
	// empty: --from-labels "" names an endpoint without labels.
	given func(flag string) bool

	port, icmp, icmpv6 string

	httpMethod, httpPath, httpHost string
	httpHeaders                    []string
}

// newPolicyTraceCmd: `membrane policy trace`, per the CLI contract of the
// policy language.
func newPolicyTraceCmd() *cobra.Command {
	o := &traceOpts{}
	cmd := &cobra.Command{
		Use:   "trace --policies PATH FROM TO [--port N/PROTO | --icmp TYPE] [--http-method M --http-path P ...]",
		Short: "Evaluate policies for one connection",
		Long: `Evaluate the policy files offline for one new connection and print the verdict,
the direction checks made (the sender's egress, the receiver's ingress) and the
rules that decided.

Name each end exactly once:
  --from-labels "k=v,..."   a managed endpoint with these labels, as the daemon
                            takes a container's: derived labels added
                            (compose.service, nomad.job, ...), those that do
                            not count for identity (container.name, ...) left out;
                            "" is an endpoint without labels
  --from-entity NAME        host, world or init (world without an address:
                            CIDR rules do not match it, use --from-ip)
  --from-ip IP              an address; offline, no endpoint or host address is
                            known, so every IP is the world (CIDR rules apply;
                            a note says when it is an address of this host)
  --from-container NAME|ID  a running container (--live only)
and the same with --to-*.

The connection is --port N/PROTO (tcp, udp or sctp), --icmp TYPE (ICMPv4, or
ICMPv6 when an IP end is IPv6) or --icmpv6 TYPE; with none of them the protocol
is unknown and only rules without ports or ICMP types match. An HTTP request
(--http-method and --http-path, optionally --http-host and --http-header K=V,
repeatable; --http-header Host=H is --http-host H) needs --port N/tcp and is
checked against the L7 rules.

With --live the running membraned evaluates the connection against its current
endpoints, host addresses and settings instead of --policies. It knows Docker's
networks too: when both ends are containers (by --*-container or address) that
Docker keeps apart, a "docker:" line (JSON: "docker") says so, and when the
client's egress sends the connection to the L7 proxy its requests get the
proxy's 403 with the reason; the verdict stays the policies'.

Exit status: 0 whatever the verdict, 1 when the policies are invalid (the
diagnostics are printed) or, with --live, when membraned cannot answer (not
running, no valid policy set loaded, a container it does not manage), 2 on a
usage error.`,
		Args: noArgsHint(`a flag's value with blanks needs quotes: --to-labels "app=web, tier=front"`),
		RunE: func(c *cobra.Command, _ []string) error {
			o.given = c.Flags().Changed
			return runTrace(c, c.OutOrStdout(), c.ErrOrStderr(), o)
		},
	}
	f := cmd.Flags()
	f.StringArrayVar(&o.policies, "policies", nil, "policy file or directory (repeatable)")
	f.StringVar(&o.format, "format", "text", "output format: text or json")
	f.BoolVar(&o.live, "live", false, "evaluate in the running membraned against its live state")
	f.StringVar(&o.fromLabels, "from-labels", "", `sender: a managed endpoint with these labels ("k=v,...")`)
	f.StringVar(&o.fromEntity, "from-entity", "", "sender: host, world or init")
	f.StringVar(&o.fromIP, "from-ip", "", "sender: an IP address")
	f.StringVar(&o.fromContainer, "from-container", "", "sender: a container name or ID (--live only)")
	f.StringVar(&o.toLabels, "to-labels", "", `receiver: a managed endpoint with these labels ("k=v,...")`)
	f.StringVar(&o.toEntity, "to-entity", "", "receiver: host, world or init")
	f.StringVar(&o.toIP, "to-ip", "", "receiver: an IP address")
	f.StringVar(&o.toContainer, "to-container", "", "receiver: a container name or ID (--live only)")
	f.StringVar(&o.port, "port", "", "destination port and protocol, N/PROTO (tcp, udp, sctp)")
	f.StringVar(&o.icmp, "icmp", "", "ICMP type, by name or number")
	f.StringVar(&o.icmpv6, "icmpv6", "", "ICMPv6 type, by name or number")
	f.StringVar(&o.httpMethod, "http-method", "", "HTTP request method")
	f.StringVar(&o.httpPath, "http-path", "", "HTTP request path")
	f.StringVar(&o.httpHost, "http-host", "", "HTTP request host")
	f.StringArrayVar(&o.httpHeaders, "http-header", nil, "HTTP request header K=V (repeatable)")
	return cmd
}

func runTrace(cmd *cobra.Command, out, errOut io.Writer, o *traceOpts) error {
	if o.format != "text" && o.format != "json" {
		return usageError("--format must be text or json, not %q", o.format)
	}
	q, err := o.query()
	if err != nil {
		return err
	}
	var res policies.Result
	if o.live {
		if len(o.policies) > 0 {
			return usageError("--live evaluates the daemon's own policies; leave out --policies")
		}
		if liveTrace == nil {
			return errors.New("--live needs a running membraned, and this build of membrane cannot reach one")
		}
		if res, err = liveTrace(cmd, q); err != nil {
			return err
		}
	} else {
		if q.FromContainer != "" || q.ToContainer != "" {
			return usageError("--from-container and --to-container need --live (offline, containers are unknown)")
		}
		if len(o.policies) == 0 {
			return usageError("policy trace needs --policies PATH (or --live)")
		}
		for _, p := range o.policies {
			if _, err := os.Stat(p); err != nil {
				if errors.Is(err, fs.ErrNotExist) {
					return usageError("--policies %s does not exist", p)
				}
				return usageError("--policies: %v", err)
			}
		}
		set, rep := policies.Load(o.policies...)
		if rep.HasErrors() {
			if o.format == "json" {
				b, err := rep.JSON()
				if err != nil {
					return err
				}
				if _, err := fmt.Fprintf(out, "%s\n", b); err != nil {
					return err
				}
			} else {
				// The contract's FILE:LINE:COL: error: SUMMARY lines, then
				// HCL's rendering with the source and the details.
				for _, d := range rep.Diagnostics {
					if _, err := fmt.Fprintln(errOut, d.String()); err != nil {
						return err
					}
				}
				fmt.Fprintln(errOut)
				if err := rep.WriteText(errOut, false); err != nil {
					return err
				}
			}
			return silentExit(1)
		}
		if len(rep.Files) == 0 {
			// An empty set allows everything: say so, since a directory
			// named by mistake (one whose policies are in subdirectories,
			// which are not read) would otherwise trace as if no policy
			// stood in the way.
			fmt.Fprintf(errOut, "membrane: --policies %s: no policy file (*.hcl, subdirectories not read): the trace is of an empty set, which allows every connection\n", strings.Join(o.policies, " "))
		}
		// Only identity-relevant labels count for selection; offline,
		// the default label filter says which (decision 46). The daemon
		// applies its configured one to --live's labels.
		q.FromLabels = identityLabels(errOut, "--from-labels", q.FromLabels)
		q.ToLabels = identityLabels(errOut, "--to-labels", q.ToLabels)
		noteHostAddrs(errOut, q.FromIP, q.ToIP)
		conn, err := q.connection()
		if err != nil {
			return err
		}
		res = set.Evaluate(&policies.Env{}, conn)
	}
	if o.format == "json" {
		b, err := json.MarshalIndent(res, "", "  ")
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(out, "%s\n", b)
		return err
	}
	return res.WriteText(termSafe(out))
}

// query checks the flags and turns them into a traceQuery; every problem is
// a usage error.
func (o *traceOpts) query() (traceQuery, error) {
	var q traceQuery
	var err error
	if q.FromLabels, q.FromEntity, q.FromIP, q.FromContainer, err = o.peerFlags("from", o.fromLabels, o.fromEntity, o.fromIP, o.fromContainer); err != nil {
		return q, err
	}
	if q.ToLabels, q.ToEntity, q.ToIP, q.ToContainer, err = o.peerFlags("to", o.toLabels, o.toEntity, o.toIP, o.toContainer); err != nil {
		return q, err
	}

	// One connection has one address family: IPv4 ends (IPv4-mapped ones
	// included, as the datapath judges them) or IPv6 ones.
	if q.FromIP != "" && q.ToIP != "" && isIPv6(q.FromIP) != isIPv6(q.ToIP) {
		return q, usageError("--from-ip %s and --to-ip %s are of two address families: a connection is IPv4 or IPv6 at both ends", q.FromIP, q.ToIP)
	}
	given := 0
	for _, s := range []string{o.port, o.icmp, o.icmpv6} {
		if s != "" {
			given++
		}
	}
	if given > 1 {
		return q, usageError("give at most one of --port, --icmp and --icmpv6")
	}
	switch {
	case o.port != "":
		num, proto, ok := strings.Cut(o.port, "/")
		proto = strings.ToLower(proto) // as in policies' ports
		n, perr := strconv.ParseUint(num, 10, 16)
		if !ok || perr != nil || n == 0 {
			return q, usageError("--port %q: want N/PROTO, N in 1-65535 and PROTO tcp, udp or sctp (e.g. 443/tcp)", o.port)
		}
		switch proto {
		case "tcp", "udp", "sctp":
		default:
			return q, usageError("--port %q: the protocol must be tcp, udp or sctp (ICMP goes in --icmp)", o.port)
		}
		q.Proto, q.Port = proto, uint16(n)
	case o.icmp != "":
		// ICMPv4 unless an end is an IPv6 address.
		v6 := isIPv6(q.FromIP) || isIPv6(q.ToIP)
		t, err := icmpType("--icmp", o.icmp, v6)
		if err != nil {
			return q, err
		}
		q.Proto, q.ICMPType = "icmp", &t
		if v6 {
			q.Proto = "icmpv6"
		}
	case o.icmpv6 != "":
		t, err := icmpType("--icmpv6", o.icmpv6, true)
		if err != nil {
			return q, err
		}
		for _, ip := range []string{q.FromIP, q.ToIP} {
			if ip != "" && !isIPv6(ip) {
				return q, usageError("--icmpv6 with the IPv4 address %s: ICMPv6 goes between IPv6 addresses (use --icmp)", ip)
			}
		}
		q.Proto, q.ICMPType = "icmpv6", &t
	}

	if o.httpMethod != "" || o.httpPath != "" || o.httpHost != "" || len(o.httpHeaders) > 0 {
		if o.httpMethod == "" || o.httpPath == "" {
			return q, usageError("an HTTP request needs both --http-method and --http-path")
		}
		if q.Proto != "tcp" {
			return q, usageError("an HTTP request needs a TCP connection: add --port N/tcp")
		}
		q.HTTPMethod, q.HTTPPath, q.HTTPHost = o.httpMethod, o.httpPath, o.httpHost
		// A header given more than once is judged as its values joined
		// with ",", as the proxies judge a repeated header; names compare
		// case-insensitively, and the first spelling is kept.
		spelled := map[string]string{}
		for _, h := range o.httpHeaders {
			k, v, ok := strings.Cut(h, "=")
			if !ok || strings.TrimSpace(k) == "" {
				return q, usageError("--http-header %q: want NAME=VALUE", h)
			}
			// Blanks around a field value are not part of it: the
			// proxies read "X-Tenant:  acme " as acme.
			v = strings.Trim(v, " \t")
			if strings.EqualFold(k, "host") {
				// The request's Host, as on the wire: the host rules
				// judge it. Twice it is two Host fields, which the
				// proxies refuse.
				if q.HTTPHost != "" {
					return q, usageError("--http-header %q: the request has one Host, given by --http-host or --http-header Host=H, not both", h)
				}
				q.HTTPHost = v
				continue
			}
			if q.HTTPHeaders == nil {
				q.HTTPHeaders = map[string]string{}
			}
			if first, ok := spelled[strings.ToLower(k)]; ok {
				q.HTTPHeaders[first] += "," + v
				continue
			}
			spelled[strings.ToLower(k)] = k
			q.HTTPHeaders[k] = v
		}
	}
	return q, nil
}

// peerFlags checks that one end is named exactly once and that the value is
// well formed. A flag given empty counts: --from-labels "" is an endpoint
// without labels (a container run without any has one), and an empty
// entity, address or container is an error of its own.
func (o *traceOpts) peerFlags(side, labels, entity, ip, container string) (map[string]string, string, string, string, error) {
	given := func(kind, v string) bool {
		if o.given != nil {
			return o.given(side + "-" + kind)
		}
		return v != ""
	}
	hasLabels, hasEntity, hasIP := given("labels", labels), given("entity", entity), given("ip", ip)
	n := 0
	for _, b := range []bool{hasLabels, hasEntity, hasIP, given("container", container)} {
		if b {
			n++
		}
	}
	if n != 1 {
		return nil, "", "", "", usageError("name the %s end exactly once: --%s-labels, --%s-entity, --%s-ip or --%s-container (got %d)", side, side, side, side, side, n)
	}
	switch {
	case hasLabels:
		l, err := policies.ParseLabels(labels)
		if err != nil {
			return nil, "", "", "", usageError("--%s-labels %q: %v", side, labels, err)
		}
		if l == nil {
			l = policies.Labels{}
		}
		return l, "", "", "", nil
	case hasEntity:
		switch policies.Entity(entity) {
		case policies.EntityHost, policies.EntityWorld, policies.EntityInit:
		case policies.EntityCluster, policies.EntityAll:
			return nil, "", "", "", usageError("--%s-entity %s is a class of peers, not one peer: use host, world or init, or --%s-labels", side, entity, side)
		default:
			return nil, "", "", "", usageError("--%s-entity %q: want host, world or init%s", side, entity, policies.SuggestPeerEntity(entity))
		}
		return nil, entity, "", "", nil
	case hasIP:
		if _, err := netip.ParseAddr(ip); err != nil {
			return nil, "", "", "", usageError("--%s-ip %q is not an IP address", side, ip)
		}
		return nil, "", ip, "", nil
	}
	if container == "" {
		return nil, "", "", "", usageError("--%s-container \"\": want a container name or ID", side)
	}
	return nil, "", "", container, nil
}

// identityLabels is what the daemon makes of the labels given to flag for
// an endpoint: the derived labels added (compose.service, nomad.job, ...),
// then the identity-relevant part under the default label filter. It notes
// on errOut the labels it leaves out.
func identityLabels(errOut io.Writer, flag string, labels map[string]string) map[string]string {
	if labels == nil {
		return nil
	}
	labels = endpoint.DeriveLabels(maps.Clone(labels), "", "")
	kept := endpoint.IdentityLabels(labels, endpoint.LabelFilter{})
	var left []string
	for k := range labels {
		if _, ok := kept[k]; !ok {
			left = append(left, k)
		}
	}
	if len(left) > 0 {
		slices.Sort(left)
		fmt.Fprintf(errOut, "membrane: %s: left out %s: volatile labels do not count for identity and selection (unless membrane.hcl's labels { include = [...] } brings them back)\n",
			flag, strings.Join(left, ", "))
	}
	return kept
}

func isIPv6(ip string) bool {
	a, err := netip.ParseAddr(ip)
	return err == nil && a.Unmap().Is6()
}

// connection builds the evaluator's Connection from an offline query.
func (q traceQuery) connection() (policies.Connection, error) {
	c := policies.Connection{
		From: offlinePeer(q.FromLabels, q.FromEntity, q.FromIP),
		To:   offlinePeer(q.ToLabels, q.ToEntity, q.ToIP),
		Port: q.Port,
	}
	c.Proto = map[string]policies.Proto{"": policies.ProtoAny, "tcp": policies.ProtoTCP, "udp": policies.ProtoUDP,
		"sctp": policies.ProtoSCTP, "icmp": policies.ProtoICMP, "icmpv6": policies.ProtoICMPv6}[q.Proto]
	if q.ICMPType != nil {
		c.ICMPType = *q.ICMPType
	}
	if q.HTTPMethod != "" {
		c.HTTP = &policies.HTTPRequest{Method: q.HTTPMethod, Path: q.HTTPPath, Host: q.HTTPHost, Headers: q.HTTPHeaders}
	}
	if err := c.Check(); err != nil {
		return c, usageError("%v", err)
	}
	return c, nil
}

// noteHostAddrs says on errOut when --from-ip or --to-ip is an address of
// the host the trace runs on: offline it is the world, where CIDR rules
// apply, but membraned judges it as the host, which they never match
// (decision 26).
func noteHostAddrs(errOut io.Writer, fromIP, toIP string) {
	addrs := hostAddrs()
	for _, end := range []struct{ side, ip string }{{"from", fromIP}, {"to", toIP}} {
		a, err := netip.ParseAddr(end.ip)
		if err != nil {
			continue
		}
		a = a.WithZone("").Unmap()
		for _, h := range addrs {
			if h.Addr.Unmap() == a {
				fmt.Fprintf(errOut, "membrane: --%s-ip %s is an address of this host (%s): offline it is judged as the world, but membraned judges it as the host, which CIDR rules never match: trace --%s-entity host, or with --live\n",
					end.side, end.ip, h.Name, end.side)
				break
			}
		}
	}
}

func offlinePeer(labels map[string]string, entity, ip string) policies.Peer {
	switch {
	case labels != nil:
		return policies.Peer{Labels: labels}
	case entity != "":
		return policies.Peer{Entity: policies.Entity(entity)}
	}
	a, _ := netip.ParseAddr(ip)
	return policies.Peer{IP: a}
}

// icmpType parses the value of flag as an ICMP (v6: ICMPv6) type, a name or
// a number 0-255, with the policy language's names (policies.ParseICMPType).
func icmpType(flag, s string, v6 bool) (uint8, error) {
	t, err := policies.ParseICMPType(s, v6)
	if err == nil {
		return t, nil
	}
	if _, otherErr := policies.ParseICMPType(s, !v6); otherErr == nil {
		// A name of the other family: say which flag takes it.
		switch {
		case v6 && flag == "--icmp":
			return 0, usageError("%s %q: an end is an IPv6 address, so --icmp means ICMPv6, and %q is an ICMPv4 type name only", flag, s, s)
		case v6:
			return 0, usageError("%s %q: %q is an ICMPv4 type name, not an ICMPv6 one: use --icmp", flag, s, s)
		default:
			return 0, usageError("%s %q: %q is an ICMPv6 type name, not an ICMPv4 one: use --icmpv6", flag, s, s)
		}
	}
	return 0, usageError("%s %q: %v", flag, s, err)
}

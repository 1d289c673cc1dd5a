package config

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"
	"github.com/hashicorp/hcl/v2/hclparse"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/zclconf/go-cty/cty"

	"github.com/membrane-fw/membrane/internal/hcldepth"
	"github.com/membrane-fw/membrane/internal/hcltext"
	"github.com/membrane-fw/membrane/policies"
)

// DefaultPath is where membraned looks for its configuration when --config
// is not given.
const DefaultPath = "/etc/membrane/membrane.hcl"

// Enforcement modes (the `enforcement` attribute).
const (
	EnforcementDefault = "default" // policies decide; default-deny as the language says
	EnforcementAlways  = "always"  // every endpoint is in default-deny both ways
	EnforcementNever   = "never"   // no policy is enforced
)

// Attach modes (the `attach` attribute).
const (
	AttachAuto = "auto"
	AttachTCX  = "tcx"
	AttachTC   = "tc"
)

// Unknown-endpoint verdicts (the `unknown_endpoint` attribute): what happens
// to traffic of a veth whose endpoint is not known yet (identity init).
const (
	UnknownDrop  = "drop"
	UnknownAllow = "allow"
)

// Config is membraned's configuration after validation, in plain Go types.
type Config struct {
	// Path is the file the configuration came from; "" when every value is
	// a default (no file at the default path).
	Path string

	PolicyDir string
	StateDir  string
	BPFFSDir  string
	APISocket string
	// APIGroup is the group allowed to change things through the API
	// (besides root) and the socket's group when it exists.
	APIGroup string

	Enforcement     string
	Audit           bool
	AuditSelector   string
	UnknownEndpoint string
	Attach          string
	LogLevel        slog.Level
	// Bridges are shell patterns of the bridges whose veths are enforced;
	// nil means the link watcher's defaults (docker0, br-*, cni0, ...).
	Bridges []string

	// IdentityGrace is how long an unused identity is kept before its
	// number is released.
	IdentityGrace time.Duration
	// ResyncInterval is the period of the full resync and conntrack GC.
	ResyncInterval time.Duration
	// FlowSample reports one new allowed flow in N to `membrane observe`
	// (0: none; drops and audit records are always reported).
	FlowSample int
	// PolicyDebounce is how long policy-directory changes settle before the
	// set is reloaded (editors write files in several steps).
	PolicyDebounce time.Duration

	Docker     Runtime
	Containerd Runtime
	Labels     Labels
	Maps       Maps
	Metrics    Metrics
	L7         L7
}

// L7 engine kinds (the `l7 { engine = ... }` attribute).
const (
	L7Auto    = "auto"    // envoy when an `envoy` binary is on PATH, else builtin
	L7Builtin = "builtin" // the Go proxy in proxy/builtin
	L7Envoy   = "envoy"   // a managed Envoy fed over xDS
)

// maxFlowSample is flow_sample's largest N: one allowed flow in a million
// is rarer than anyone samples, and the datapath holds N in 32 bits.
const maxFlowSample = 1000000

// DefaultL7Port is the proxy's transparent listener port when the config
// names none. Envoy's customary sidecar port; it is bound with
// IP_TRANSPARENT and only ever receives redirected connections.
const DefaultL7Port = 15001

// The proxy's connection limits when the config names none: enough for
// busy keep-alive pools, few enough that one container cannot take all of
// membraned's file descriptors (two a proxied connection) or memory.
const (
	DefaultL7MaxConnections          = 16384
	DefaultL7MaxConnectionsPerSource = 4096
)

// L7 is the `l7 {}` block: the proxy that HTTP rules are sent to.
type L7 struct {
	Engine string
	// Port is the transparent listener's TCP port (the datapath's proxy
	// port for every L7 ruleset).
	Port int
	// EnvoyUnit, when set, is the systemd unit that runs Envoy; membraned
	// starts it instead of supervising its own Envoy process.
	EnvoyUnit string
	// MaxConnections bounds the client connections the proxy holds open
	// at once, MaxConnectionsPerSource those from one source address (the
	// built-in engine only); a connection over either is reset.
	MaxConnections          int
	MaxConnectionsPerSource int
}

// Runtime is one `runtime "NAME" {}` block.
type Runtime struct {
	Enabled bool
	// Socket is the runtime's API socket.
	Socket string
	// Namespaces lists the containerd namespaces to watch; empty means all.
	// Unused for Docker.
	Namespaces []string
}

// Labels is the `labels {}` block: regular expressions on label keys that
// change which labels are identity-relevant. Include adds keys back that
// the default exclusions (volatile labels) drop; Exclude drops more.
type Labels struct {
	Include []*regexp.Regexp
	Exclude []*regexp.Regexp
}

// Maps holds the BPF map sizes (entries).
type Maps struct {
	Endpoints     int
	IPCache       int
	Policy        int // local identities with a policy (outer map)
	PolicyEntries int // entries per identity (inner maps)
	Conntrack     int
	Events        int // ring buffer size in bytes (power of two, page multiple)
}

// Metrics is the `metrics {}` block. An empty Listen disables metrics.
type Metrics struct {
	Listen string
}

// Default returns the configuration used when no file exists.
func Default() *Config {
	return &Config{
		PolicyDir:       "/etc/membrane/policies.d",
		StateDir:        "/var/lib/membrane",
		BPFFSDir:        "/sys/fs/bpf/membrane",
		APISocket:       "/run/membrane/membrane.sock",
		APIGroup:        "membrane",
		Enforcement:     EnforcementDefault,
		UnknownEndpoint: UnknownDrop,
		Attach:          AttachAuto,
		LogLevel:        slog.LevelInfo,
		IdentityGrace:   5 * time.Minute,
		ResyncInterval:  time.Minute,
		PolicyDebounce:  50 * time.Millisecond,
		Docker:          Runtime{Enabled: true, Socket: "/var/run/docker.sock"},
		Containerd:      Runtime{Enabled: true, Socket: "/run/containerd/containerd.sock"},
		Maps: Maps{
			Endpoints:     4096,
			IPCache:       65536,
			Policy:        4096,
			PolicyEntries: 16384,
			Conntrack:     262144,
			Events:        1 << 22,
		},
		Metrics: Metrics{Listen: "127.0.0.1:9964"},
		L7: L7{Engine: L7Auto, Port: DefaultL7Port,
			MaxConnections: DefaultL7MaxConnections, MaxConnectionsPerSource: DefaultL7MaxConnectionsPerSource},
	}
}

// Error is an invalid configuration: every problem with its position.
type Error struct {
	Diagnostics hcl.Diagnostics
}

func (e *Error) Error() string {
	var b strings.Builder
	for i, d := range e.Diagnostics {
		if i > 0 {
			b.WriteString("\n")
		}
		b.WriteString(formatDiag(d))
	}
	return b.String()
}

func formatDiag(d *hcl.Diagnostic) string {
	sev := "error"
	if d.Severity == hcl.DiagWarning {
		sev = "warning"
	}
	pos := ""
	if d.Subject != nil {
		pos = fmt.Sprintf("%s:%d:%d: ", d.Subject.Filename, d.Subject.Start.Line, d.Subject.Start.Column)
	}
	s := pos + sev + ": " + d.Summary
	if d.Detail != "" {
		s += ": " + d.Detail
	}
	return s
}

// Load reads the configuration at path. When explicit is false and path
// does not exist, the defaults are returned (a fresh install has no file).
func Load(path string, explicit bool) (*Config, error) {
	src, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) && !explicit {
			return Default(), nil
		}
		return nil, fmt.Errorf("reading config: %w", err)
	}
	return Parse(path, src)
}

// Salvage is the configuration for `membraned --cleanup` when Load fails
// on path: the defaults, but with the bpffs_dir and api_socket that the
// file sets wherever they can still be read (an absolute path as a string
// literal, in a file that is invalid elsewhere), so that a package removal
// takes down the pins the daemon used, not only the default ones.
func Salvage(path string) *Config {
	cfg := Default()
	src, err := os.ReadFile(path)
	if err != nil || hcldepth.Check(src, path) != nil {
		return cfg
	}
	f, _ := hclparse.NewParser().ParseHCL(src, path)
	if f == nil {
		return cfg
	}
	body, ok := f.Body.(*hclsyntax.Body)
	if !ok {
		return cfg
	}
	for name, dst := range map[string]*string{"bpffs_dir": &cfg.BPFFSDir, "api_socket": &cfg.APISocket} {
		a, ok := body.Attributes[name]
		if !ok {
			continue
		}
		v, diags := a.Expr.Value(nil)
		if diags.HasErrors() || !v.IsKnown() || v.IsNull() || v.Type() != cty.String {
			continue
		}
		if p := v.AsString(); filepath.IsAbs(p) {
			*dst = filepath.Clean(p)
		}
	}
	return cfg
}

// Parse decodes and validates a configuration file's contents; filename is
// used in positions.
func Parse(filename string, src []byte) (*Config, error) {
	if d := hcltext.Check(src, filename); d != nil {
		return nil, &Error{Diagnostics: hcl.Diagnostics{d}}
	}
	if d := hcldepth.Check(src, filename); d != nil {
		return nil, &Error{Diagnostics: hcl.Diagnostics{d}}
	}
	p := hclparse.NewParser()
	f, diags := p.ParseHCL(src, filename)
	if diags.HasErrors() {
		return nil, &Error{Diagnostics: diags}
	}
	var raw fileSchema
	diags = gohcl.DecodeBody(f.Body, nil, &raw)
	// The attributes that decoded are checked even where others did not
	// (each is a pointer, nil when absent), so one run of --check-config
	// shows every mistake in the file. An attribute whose value did not
	// decode may still be set, to its zero value (gohcl allocates before
	// it converts: a fraction for a whole number, an interpolation), so
	// compile's word on it is dropped: it would judge a value the file
	// does not hold ("l7.port = 0 is out of range").
	countDetails(f.Body, diags)
	bad := undecoded(f.Body, diags)
	cfg, cdiags := compile(&raw, f.Body)
	diags = append(dropInside(diags, bad, true), dropInside(cdiags, bad, false)...)
	if diags.HasErrors() {
		errs := errorsOnly(diags)
		sort.SliceStable(errs, func(i, j int) bool {
			a, b := errs[i].Subject, errs[j].Subject
			return a != nil && (b == nil || a.Start.Byte < b.Start.Byte)
		})
		return nil, &Error{Diagnostics: errs}
	}
	cfg.Path = filename
	return cfg, nil
}

// countBound is the range of a whole-number attribute; pow2: a power of
// two.
type countBound struct {
	lo, hi int
	pow2   bool
}

// countBounds are the whole-number attributes' bounds, by dotted name
// (block.attribute), for compile's checks and for countDetails.
var countBounds = map[string]countBound{
	"flow_sample":                   {0, maxFlowSample, false},
	"maps.endpoints":                {16, 1 << 20, false},
	"maps.ipcache":                  {16, 1 << 24, false},
	"maps.policy":                   {16, 1 << 20, false},
	"maps.policy_entries":           {16, 1 << 20, false},
	"maps.conntrack":                {1024, 1 << 24, false},
	"maps.events":                   {4096, 1 << 30, true},
	"l7.port":                       {1, 65535, false},
	"l7.max_connections":            {1, 1 << 20, false},
	"l7.max_connections_per_source": {1, 1 << 20, false},
}

// countDetails replaces HCL's detail for a whole-number attribute whose
// value is a fraction or past Go's int ("between -9223372036854775808 and
// 9223372036854775807", which no count here may be) with the attribute's
// own bounds.
func countDetails(body hcl.Body, diags hcl.Diagnostics) {
	sb, ok := body.(*hclsyntax.Body)
	if !ok {
		return
	}
	attrs := map[string]*hclsyntax.Attribute{}
	for name, a := range sb.Attributes {
		attrs[name] = a
	}
	for _, blk := range sb.Blocks {
		for name, a := range blk.Body.Attributes {
			attrs[blk.Type+"."+name] = a
		}
	}
	for _, d := range diags {
		if d.Subject == nil || !strings.Contains(d.Detail, "whole number, between") {
			continue
		}
		for name, a := range attrs {
			b, ok := countBounds[name]
			if !ok || !within(*d.Subject, a.Expr.Range()) {
				continue
			}
			if b.pow2 {
				d.Detail = fmt.Sprintf("%s must be a whole number, a power of two from %d to %d", name, b.lo, b.hi)
			} else {
				d.Detail = fmt.Sprintf("%s must be a whole number from %d to %d", name, b.lo, b.hi)
			}
		}
	}
}

// undecoded are the ranges of the attributes, at any depth of body, whose
// value has an error among diags.
func undecoded(body hcl.Body, diags hcl.Diagnostics) []hcl.Range {
	var out []hcl.Range
	var walk func(b *hclsyntax.Body)
	walk = func(b *hclsyntax.Body) {
		for _, a := range b.Attributes {
			for _, d := range diags {
				if d.Severity == hcl.DiagError && d.Subject != nil && within(*d.Subject, a.Expr.Range()) {
					out = append(out, a.SrcRange)
					break
				}
			}
		}
		for _, blk := range b.Blocks {
			walk(blk.Body)
		}
	}
	if b, ok := body.(*hclsyntax.Body); ok {
		walk(b)
	}
	return out
}

// dropInside leaves out the diagnostics about an attribute of bad: all of
// them (compile's), or (unknownOnly, HCL's) a "value must be known" that
// only repeats another error there, of an interpolation or a variable.
func dropInside(diags hcl.Diagnostics, bad []hcl.Range, unknownOnly bool) hcl.Diagnostics {
	unknown := func(d *hcl.Diagnostic) bool { return strings.Contains(d.Detail, "value must be known") }
	var out hcl.Diagnostics
	for _, d := range diags {
		drop := false
		if d.Subject != nil && (!unknownOnly || unknown(d)) {
			for _, r := range bad {
				if !within(*d.Subject, r) {
					continue
				}
				if !unknownOnly {
					drop = true
					break
				}
				for _, o := range diags {
					if o != d && o.Severity == hcl.DiagError && !unknown(o) && o.Subject != nil && within(*o.Subject, r) {
						drop = true
						break
					}
				}
			}
		}
		if !drop {
			out = append(out, d)
		}
	}
	return out
}

// within reports whether r lies inside outer.
func within(r, outer hcl.Range) bool {
	return r.Filename == outer.Filename && r.Start.Byte >= outer.Start.Byte && r.End.Byte <= outer.End.Byte
}

func errorsOnly(diags hcl.Diagnostics) hcl.Diagnostics {
	var out hcl.Diagnostics
	for _, d := range diags {
		if d.Severity == hcl.DiagError {
			out = append(out, d)
		}
	}
	return out
}

// The schema: pointers mark optional attributes; the *Range fields keep the
// attribute positions for validation errors.
type fileSchema struct {
	PolicyDir       *string   `hcl:"policy_dir"`
	StateDir        *string   `hcl:"state_dir"`
	BPFFSDir        *string   `hcl:"bpffs_dir"`
	APISocket       *string   `hcl:"api_socket"`
	APIGroup        *string   `hcl:"api_group"`
	Enforcement     *string   `hcl:"enforcement"`
	Audit           *bool     `hcl:"audit"`
	AuditSelector   *string   `hcl:"audit_selector"`
	UnknownEndpoint *string   `hcl:"unknown_endpoint"`
	Attach          *string   `hcl:"attach"`
	LogLevel        *string   `hcl:"log_level"`
	Bridges         *[]string `hcl:"bridges"`
	IdentityGrace   *string   `hcl:"identity_grace"`
	ResyncInterval  *string   `hcl:"resync_interval"`
	PolicyDebounce  *string   `hcl:"policy_debounce"`
	FlowSample      *int      `hcl:"flow_sample"`

	Runtimes []runtimeSchema `hcl:"runtime,block"`
	Labels   []labelsSchema  `hcl:"labels,block"`
	Maps     []mapsSchema    `hcl:"maps,block"`
	Metrics  []metricsSchema `hcl:"metrics,block"`
	L7       []l7Schema      `hcl:"l7,block"`
}

type l7Schema struct {
	Engine                  *string   `hcl:"engine"`
	Port                    *int      `hcl:"port"`
	EnvoyUnit               *string   `hcl:"envoy_unit"`
	MaxConnections          *int      `hcl:"max_connections"`
	MaxConnectionsPerSource *int      `hcl:"max_connections_per_source"`
	DefRange                hcl.Range `hcl:",def_range"`
}

type runtimeSchema struct {
	Name       string    `hcl:"name,label"`
	Enabled    *bool     `hcl:"enabled"`
	Socket     *string   `hcl:"socket"`
	Namespaces *[]string `hcl:"namespaces"`
	DefRange   hcl.Range `hcl:",def_range"`
}

type labelsSchema struct {
	Include  *[]string `hcl:"include"`
	Exclude  *[]string `hcl:"exclude"`
	DefRange hcl.Range `hcl:",def_range"`
}

type mapsSchema struct {
	Endpoints     *int      `hcl:"endpoints"`
	IPCache       *int      `hcl:"ipcache"`
	Policy        *int      `hcl:"policy"`
	PolicyEntries *int      `hcl:"policy_entries"`
	Conntrack     *int      `hcl:"conntrack"`
	Events        *int      `hcl:"events"`
	DefRange      hcl.Range `hcl:",def_range"`
}

type metricsSchema struct {
	Listen   *string   `hcl:"listen"`
	DefRange hcl.Range `hcl:",def_range"`
}

// compile validates the decoded schema and builds the Config. Positions
// come from the remaining body's attributes (gohcl gives no per-attribute
// ranges for optional attributes, so we look them up by name).
func compile(raw *fileSchema, body hcl.Body) (*Config, hcl.Diagnostics) {
	cfg := Default()
	var diags hcl.Diagnostics
	top := attrRanges(body)
	errAt := func(rng hcl.Range, summary, detail string) {
		r := rng
		diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: summary, Detail: detail, Subject: &r})
	}

	absPath := func(name string, v *string, dst *string) {
		if v == nil {
			return
		}
		if badPath(*v) {
			errAt(top[name], fmt.Sprintf("%s has a blank or control character: %q", name, *v), blankDetail)
			return
		}
		if !filepath.IsAbs(*v) {
			errAt(top[name], fmt.Sprintf("%s must be an absolute path", name), fmt.Sprintf("got %q", *v))
			return
		}
		*dst = filepath.Clean(*v)
	}
	absPath("policy_dir", raw.PolicyDir, &cfg.PolicyDir)
	absPath("state_dir", raw.StateDir, &cfg.StateDir)
	absPath("bpffs_dir", raw.BPFFSDir, &cfg.BPFFSDir)
	// membraned --cleanup removes bpffs_dir whole: not the bpf
	// filesystem's root, where other programs pin too, nor above it.
	if raw.BPFFSDir != nil && (cfg.BPFFSDir == "/sys/fs/bpf" || strings.HasPrefix("/sys/fs/bpf", strings.TrimSuffix(cfg.BPFFSDir, "/")+"/")) {
		errAt(top["bpffs_dir"], "bpffs_dir must be a directory of its own below /sys/fs/bpf", fmt.Sprintf("got %q: membraned --cleanup removes the directory whole, and other programs pin in /sys/fs/bpf too; write \"/sys/fs/bpf/membrane\"", cfg.BPFFSDir))
	}
	absPath("api_socket", raw.APISocket, &cfg.APISocket)
	if raw.APIGroup != nil {
		if badName(*raw.APIGroup) {
			errAt(top["api_group"], fmt.Sprintf("api_group has a blank or control character: %q", *raw.APIGroup), blankDetail)
		}
		cfg.APIGroup = *raw.APIGroup
	}

	oneOf := func(name string, v *string, dst *string, allowed ...string) {
		if v == nil {
			return
		}
		for _, a := range allowed {
			if *v == a {
				*dst = *v
				return
			}
		}
		errAt(top[name], fmt.Sprintf("invalid %s %q", name, *v), "must be one of "+quoteList(allowed))
	}
	oneOf("enforcement", raw.Enforcement, &cfg.Enforcement, EnforcementDefault, EnforcementAlways, EnforcementNever)
	oneOf("unknown_endpoint", raw.UnknownEndpoint, &cfg.UnknownEndpoint, UnknownDrop, UnknownAllow)
	oneOf("attach", raw.Attach, &cfg.Attach, AttachAuto, AttachTCX, AttachTC)
	if raw.LogLevel != nil {
		var lvl slog.Level
		switch *raw.LogLevel {
		case "debug", "info", "warn", "error":
			_ = lvl.UnmarshalText([]byte(*raw.LogLevel))
			cfg.LogLevel = lvl
		default:
			errAt(top["log_level"], fmt.Sprintf("invalid log_level %q", *raw.LogLevel), `must be one of "debug", "info", "warn", "error"`)
		}
	}
	if raw.Bridges != nil {
		for i, b := range *raw.Bridges {
			if _, err := path.Match(b, ""); err != nil || b == "" || badName(b) {
				errAt(elemRange(body, "bridges", i, top["bridges"]), fmt.Sprintf("invalid bridge pattern %q", b), "must be an interface name or a shell pattern like \"br-*\"")
			}
		}
		cfg.Bridges = *raw.Bridges
	}
	if raw.Audit != nil {
		cfg.Audit = *raw.Audit
	}
	if raw.AuditSelector != nil {
		// Empty means no endpoint, and so does blank: parsed, blanks are
		// the policy language's empty selector, which selects them all.
		sel := strings.TrimSpace(*raw.AuditSelector)
		if err := checkSelector(sel); err != nil {
			at, msg := top["audit_selector"], err.Error()
			var se *policies.SelectorError
			if errors.As(err, &se) {
				lead := len(*raw.AuditSelector) - len(strings.TrimLeft(*raw.AuditSelector, " \t\n\r\v\f"))
				at, msg = charRange(body, "audit_selector", *raw.AuditSelector, lead+se.Offset, at), se.Msg
			}
			errAt(at, "invalid audit_selector: "+msg, "a selector in the policy language's grammar (k=v, k!=v, k in (a, b), ...), or \"\" to audit no endpoint")
		}
		cfg.AuditSelector = sel
	}
	// Each duration and count has bounds on both sides (policy decision
	// 77): past them a value is a slip ("1000000h", a count in bytes) that
	// would hold changes back for good, or wrap in the datapath.
	duration := func(name string, v *string, dst *time.Duration, lo, hi time.Duration, los, his, example string) {
		if v == nil {
			return
		}
		d, err := time.ParseDuration(*v)
		if err != nil || d < lo || d > hi {
			detail := fmt.Sprintf("must be a duration between %s and %s, like %q", los, his, example)
			if _, aerr := strconv.ParseFloat(strings.TrimSpace(*v), 64); aerr == nil {
				detail += " (a number needs a unit: ms, s, m or h)"
			}
			errAt(top[name], fmt.Sprintf("invalid %s %q", name, *v), detail)
			return
		}
		*dst = d
	}
	if raw.FlowSample != nil {
		if n, b := *raw.FlowSample, countBounds["flow_sample"]; n < b.lo || n > b.hi {
			errAt(top["flow_sample"], fmt.Sprintf("invalid flow_sample %d", n), fmt.Sprintf("must be 0 (no allowed flows reported) or N from 1 to %d (one new allowed flow in N)", maxFlowSample))
		} else {
			cfg.FlowSample = n
		}
	}
	duration("identity_grace", raw.IdentityGrace, &cfg.IdentityGrace, 0, 24*time.Hour, "0s", "24h", "5m")
	duration("resync_interval", raw.ResyncInterval, &cfg.ResyncInterval, time.Second, time.Hour, "1s", "1h", "1m")
	duration("policy_debounce", raw.PolicyDebounce, &cfg.PolicyDebounce, 0, 10*time.Second, "0s", "10s", "50ms")

	seenRuntime := map[string]hcl.Range{}
	for i, rt := range raw.Runtimes {
		if prev, ok := seenRuntime[rt.Name]; ok {
			errAt(rt.DefRange, fmt.Sprintf("runtime %q already declared at %s", rt.Name, short(prev)), "declare each runtime once")
			continue
		}
		seenRuntime[rt.Name] = rt.DefRange
		var dst *Runtime
		switch rt.Name {
		case "docker":
			dst = &cfg.Docker
		case "containerd":
			dst = &cfg.Containerd
		default:
			errAt(rt.DefRange, fmt.Sprintf("unknown runtime %q", rt.Name), `must be "docker" or "containerd"`)
			continue
		}
		rr := blockAttrRanges(body, "runtime", i)
		if rt.Enabled != nil {
			dst.Enabled = *rt.Enabled
		}
		if rt.Socket != nil {
			if badPath(*rt.Socket) {
				errAt(rr["socket"], fmt.Sprintf("socket has a blank or control character: %q", *rt.Socket), blankDetail)
			} else if !filepath.IsAbs(*rt.Socket) {
				errAt(rr["socket"], "socket must be an absolute path", fmt.Sprintf("got %q", *rt.Socket))
			}
			dst.Socket = *rt.Socket
		}
		if rt.Namespaces != nil {
			if rt.Name == "docker" {
				errAt(rr["namespaces"], "namespaces is only for containerd", "Docker has no namespaces; remove this attribute")
			}
			dst.Namespaces = *rt.Namespaces
		}
	}

	for i, lb := range raw.Labels {
		if i > 0 {
			errAt(lb.DefRange, "labels block already declared at "+short(raw.Labels[0].DefRange), "merge the blocks into one")
			continue
		}
		lr := blockAttrRanges(body, "labels", i)
		lbody := blockBody(body, "labels", i)
		re := func(name string, list *[]string, dst *[]*regexp.Regexp) {
			if list == nil {
				return
			}
			for j, s := range *list {
				r, err := regexp.Compile(s)
				if err != nil {
					errAt(elemRange(lbody, name, j, lr[name]), fmt.Sprintf("invalid regular expression %q in %s", s, name), err.Error())
					continue
				}
				*dst = append(*dst, r)
			}
		}
		re("include", lb.Include, &cfg.Labels.Include)
		re("exclude", lb.Exclude, &cfg.Labels.Exclude)
	}

	for i, m := range raw.Maps {
		if i > 0 {
			errAt(m.DefRange, "maps block already declared at "+short(raw.Maps[0].DefRange), "merge the blocks into one")
			continue
		}
		mr := blockAttrRanges(body, "maps", i)
		size := func(name string, v *int, dst *int) {
			if v == nil {
				return
			}
			if b := countBounds["maps."+name]; *v < b.lo || *v > b.hi {
				errAt(mr[name], fmt.Sprintf("maps.%s = %d is out of range", name, *v), fmt.Sprintf("must be between %d and %d", b.lo, b.hi))
				return
			}
			*dst = *v
		}
		size("endpoints", m.Endpoints, &cfg.Maps.Endpoints)
		size("ipcache", m.IPCache, &cfg.Maps.IPCache)
		size("policy", m.Policy, &cfg.Maps.Policy)
		size("policy_entries", m.PolicyEntries, &cfg.Maps.PolicyEntries)
		size("conntrack", m.Conntrack, &cfg.Maps.Conntrack)
		if m.Events != nil {
			v, b := *m.Events, countBounds["maps.events"]
			if v < b.lo || v > b.hi || v&(v-1) != 0 {
				errAt(mr["events"], fmt.Sprintf("maps.events = %d is not a valid ring buffer size", v), "must be a power of two between 4096 and 1073741824 bytes")
			} else {
				cfg.Maps.Events = v
			}
		}
	}

	var listenAt, l7PortAt *hcl.Range
	for i, m := range raw.Metrics {
		if i > 0 {
			errAt(m.DefRange, "metrics block already declared at "+short(raw.Metrics[0].DefRange), "merge the blocks into one")
			continue
		}
		mr := blockAttrRanges(body, "metrics", i)
		if m.Listen != nil {
			if *m.Listen != "" {
				if !validListen(*m.Listen) {
					errAt(mr["listen"], fmt.Sprintf("invalid metrics listen address %q", *m.Listen), `must be ADDRESS:PORT like "127.0.0.1:9964" (an IP address, localhost or nothing for every address, and a port 1-65535), or "" to disable metrics`)
				}
			}
			cfg.Metrics.Listen = *m.Listen
			if r, ok := mr["listen"]; ok {
				listenAt = &r
			}
		}
	}

	for i, l := range raw.L7 {
		if i > 0 {
			errAt(l.DefRange, "l7 block already declared at "+short(raw.L7[0].DefRange), "merge the blocks into one")
			continue
		}
		lr := blockAttrRanges(body, "l7", i)
		if l.Engine != nil {
			switch *l.Engine {
			case L7Auto, L7Builtin, L7Envoy:
				cfg.L7.Engine = *l.Engine
			default:
				errAt(lr["engine"], fmt.Sprintf("invalid l7 engine %q", *l.Engine), "must be one of "+quoteList([]string{L7Auto, L7Builtin, L7Envoy}))
			}
		}
		if l.Port != nil {
			if b := countBounds["l7.port"]; *l.Port < b.lo || *l.Port > b.hi {
				errAt(lr["port"], fmt.Sprintf("l7.port = %d is out of range", *l.Port), "must be a TCP port between 1 and 65535")
			} else {
				cfg.L7.Port = *l.Port
				if r, ok := lr["port"]; ok {
					l7PortAt = &r
				}
			}
		}
		if l.EnvoyUnit != nil {
			u := *l.EnvoyUnit
			switch {
			case u == "":
			case serviceUnitProblem(u) != "":
				errAt(lr["envoy_unit"], fmt.Sprintf("invalid l7.envoy_unit %q: %s", u, serviceUnitProblem(u)), `must be a systemd service name like "membrane-envoy.service", or "" to let membraned run Envoy itself`)
			case cfg.L7.Engine == L7Builtin:
				errAt(lr["envoy_unit"], "l7.envoy_unit is set but engine is \"builtin\"", `remove envoy_unit, or set engine = "envoy" or "auto"`)
			default:
				cfg.L7.EnvoyUnit = u
			}
		}
		for _, lim := range []struct {
			name string
			v    *int
			dst  *int
		}{
			{"max_connections", l.MaxConnections, &cfg.L7.MaxConnections},
			{"max_connections_per_source", l.MaxConnectionsPerSource, &cfg.L7.MaxConnectionsPerSource},
		} {
			switch {
			case lim.v == nil:
			case *lim.v < countBounds["l7."+lim.name].lo || *lim.v > countBounds["l7."+lim.name].hi:
				errAt(lr[lim.name], fmt.Sprintf("l7.%s = %d is out of range", lim.name, *lim.v), "must be between 1 and 1048576 connections")
			default:
				*lim.dst = *lim.v
			}
		}
	}
	// The proxy listens on its port on every address: metrics on the same
	// port would stop the daemon at start, after --check-config passed.
	if _, port, err := net.SplitHostPort(cfg.Metrics.Listen); err == nil && port == strconv.Itoa(cfg.L7.Port) {
		at := l7PortAt
		if at == nil {
			at = listenAt
		}
		if at != nil {
			errAt(*at, fmt.Sprintf("l7.port %d is also metrics.listen's port (%q)", cfg.L7.Port, cfg.Metrics.Listen), "the L7 proxy listens on its port on every address, so the metrics cannot have it: give one of them another port")
		}
	}
	return cfg, diags
}

// attrRanges returns the ranges of a native-syntax body's attributes, by
// name. gohcl does not keep ranges of optional attributes, so validation
// reads them from the syntax tree.
func attrRanges(body hcl.Body) map[string]hcl.Range {
	out := map[string]hcl.Range{}
	if sb, ok := body.(*hclsyntax.Body); ok {
		for name, a := range sb.Attributes {
			out[name] = a.SrcRange
		}
	}
	return out
}

// badPath reports whether s, a path, has a control character or blanks at
// its ends, and badName whether s, a group or interface name, has a blank
// or control character anywhere (inside a path a blank may be meant).
// Either is a slip (a heredoc ends with a line break) that names nothing
// there is, and the daemon would wait for it, or match nothing, without a
// word.
func badPath(s string) bool {
	return strings.TrimSpace(s) != s || strings.IndexFunc(s, unicode.IsControl) >= 0
}

func badName(s string) bool {
	return strings.IndexFunc(s, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }) >= 0
}

const blankDetail = "a path has no line break, tab or blank at its ends, and a group or interface name none at all (a heredoc ends with a line break): write the name alone between quotes"

// validListen reports whether membraned can listen on addr for metrics: a
// port 1-65535 by number, on an IP address, localhost or every address.
// A host name would be looked up at start (and fail there, or bind
// wherever it points), a service name or port 0 would listen where
// Prometheus is not told to look: the daemon stopped at start on what
// --check-config had passed.
func validListen(addr string) bool {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil || n == 0 {
		return false
	}
	if host == "" || host == "localhost" {
		return true
	}
	_, err = netip.ParseAddr(host)
	return err == nil
}

// blockAttrRanges is attrRanges for the i-th block of type typ in body
// (gohcl decodes blocks in source order, so the indexes agree).
func blockAttrRanges(body hcl.Body, typ string, i int) map[string]hcl.Range {
	if b := blockBody(body, typ, i); b != nil {
		return attrRanges(b)
	}
	return map[string]hcl.Range{}
}

// blockBody is the body of the i-th block of type typ in body, or nil.
func blockBody(body hcl.Body, typ string, i int) hcl.Body {
	sb, ok := body.(*hclsyntax.Body)
	if !ok {
		return nil
	}
	n := 0
	for _, b := range sb.Blocks {
		if b.Type != typ {
			continue
		}
		if n == i {
			return b.Body
		}
		n++
	}
	return nil
}

// elemRange is the range of element i of the list that attribute name of
// body is written as, so that an error is at the element at fault; rng
// (the attribute's) when the list is not written out.
func elemRange(body hcl.Body, name string, i int, rng hcl.Range) hcl.Range {
	sb, ok := body.(*hclsyntax.Body)
	if !ok || sb.Attributes[name] == nil {
		return rng
	}
	if t, ok := sb.Attributes[name].Expr.(*hclsyntax.TupleConsExpr); ok && i < len(t.Exprs) {
		return t.Exprs[i].Range()
	}
	return rng
}

// charRange is the range of the character at byte off of val, the string
// attribute name of body holds, when the string is written without
// escapes (each makes the source longer than the value); else the
// string's range, or rng when it is not a plain string.
func charRange(body hcl.Body, name, val string, off int, rng hcl.Range) hcl.Range {
	sb, ok := body.(*hclsyntax.Body)
	if !ok || sb.Attributes[name] == nil {
		return rng
	}
	t, ok := sb.Attributes[name].Expr.(*hclsyntax.TemplateExpr)
	if !ok {
		return rng
	}
	r := t.SrcRange
	if r.End.Byte-r.Start.Byte != len(val)+2 || r.Start.Line != r.End.Line || off < 0 || off > len(val) {
		return r
	}
	return hcltext.CharAt(r, val, off)
}

func quoteList(l []string) string {
	q := make([]string, len(l))
	for i, s := range l {
		q[i] = fmt.Sprintf("%q", s)
	}
	return strings.Join(q, ", ")
}

func short(r hcl.Range) string {
	return fmt.Sprintf("%s:%d", r.Filename, r.Start.Line)
}

// checkSelector validates audit_selector with the policy language's own
// selector parser, so the config accepts exactly what policies accept.
func checkSelector(s string) error {
	_, err := policies.ParseSelector(s)
	return err
}

// serviceUnitProblem says what keeps u from being the name of a systemd
// service that systemctl can start, "" when nothing does. The grammar is
// systemd's (unit_name_is_valid, plain or instance names): at most 255
// bytes of ASCII letters, digits and ":-_.\", with one "@" that
// starts a non-empty instance (which may hold more "@"), before
// ".service". membraned also refuses a leading "-", which systemctl would
// take for an option. Anything else would reach systemctl as a pattern
// ("*.service" stops every loaded service) or an option.
func serviceUnitProblem(u string) string {
	const suffix = ".service"
	name, ok := strings.CutSuffix(u, suffix)
	switch {
	case len(u) > 255:
		return fmt.Sprintf("%d bytes long: systemd takes at most 255", len(u))
	case !ok:
		return `must end in ".service"`
	case name == "":
		return `the name before ".service" is empty`
	case strings.HasPrefix(name, "-"):
		return `a unit name must not begin with "-": systemctl would read it as an option`
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune(":-_.\\@", r)) {
			return fmt.Sprintf("%q is not allowed in a unit name", string(r)) + ` (only ASCII letters, digits, ":", "-", "_", ".", "\" and "@")`
		}
	}
	prefix, instance, templ := strings.Cut(name, "@")
	switch {
	case templ && prefix == "":
		return `the name before "@" is empty`
	case templ && instance == "":
		return fmt.Sprintf("%q is a template: name an instance, as %q", u, prefix+"@main"+suffix)
	}
	return ""
}

package config

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"testing"
	"time"
)

func TestMissingDefaultFileMeansDefaults(t *testing.T) {
	cfg, err := Load(filepath.Join(t.TempDir(), "membrane.hcl"), false)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.PolicyDir != "/etc/membrane/policies.d" || cfg.Metrics.Listen != "127.0.0.1:9964" || cfg.Enforcement != "default" || cfg.Path != "" {
		t.Fatalf("defaults not applied: %+v", cfg)
	}
}

func TestMissingExplicitFileIsAnError(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "nope.hcl"), true)
	if err == nil || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("want not-exist error, got %v", err)
	}
}

func TestFullConfigDecodes(t *testing.T) {
	src := `
policy_dir       = "/srv/policies"
state_dir        = "/srv/state"
bpffs_dir        = "/sys/fs/bpf/mt"
api_socket       = "/run/mt.sock"
enforcement      = "always"
audit            = true
audit_selector   = "env=staging"
unknown_endpoint = "allow"
attach           = "tc"
bridges          = ["docker0", "br-*"]
log_level        = "debug"
identity_grace   = "30s"
flow_sample      = 100

runtime "docker" {
  socket = "/run/docker.sock"
}
runtime "containerd" {
  enabled    = false
  namespaces = ["default", "nomad"]
}
labels {
  include = ["^com\\.docker\\.compose\\.version$"]
  exclude = ["^build\\."]
}
maps {
  endpoints = 128
  conntrack = 2048
  events    = 65536
}
metrics {
  listen = ""
}
`
	cfg, err := Parse("m.hcl", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.PolicyDir != "/srv/policies" || cfg.StateDir != "/srv/state" || cfg.BPFFSDir != "/sys/fs/bpf/mt" || cfg.APISocket != "/run/mt.sock" {
		t.Errorf("paths: %+v", cfg)
	}
	if cfg.Enforcement != "always" || !cfg.Audit || cfg.AuditSelector != "env=staging" || cfg.UnknownEndpoint != "allow" || cfg.Attach != "tc" || cfg.LogLevel != slog.LevelDebug {
		t.Errorf("modes: %+v", cfg)
	}
	if strings.Join(cfg.Bridges, ",") != "docker0,br-*" {
		t.Errorf("bridges %v", cfg.Bridges)
	}
	if cfg.FlowSample != 100 {
		t.Errorf("flow_sample %d", cfg.FlowSample)
	}
	if cfg.IdentityGrace != 30*time.Second {
		t.Errorf("grace %v", cfg.IdentityGrace)
	}
	if cfg.Docker.Socket != "/run/docker.sock" || !cfg.Docker.Enabled || cfg.Containerd.Enabled || strings.Join(cfg.Containerd.Namespaces, ",") != "default,nomad" {
		t.Errorf("runtimes: %+v %+v", cfg.Docker, cfg.Containerd)
	}
	if len(cfg.Labels.Include) != 1 || !cfg.Labels.Include[0].MatchString("com.docker.compose.version") || len(cfg.Labels.Exclude) != 1 {
		t.Errorf("labels: %+v", cfg.Labels)
	}
	if cfg.Maps.Endpoints != 128 || cfg.Maps.Conntrack != 2048 || cfg.Maps.Events != 65536 || cfg.Maps.IPCache != Default().Maps.IPCache {
		t.Errorf("maps: %+v", cfg.Maps)
	}
	if cfg.Metrics.Listen != "" {
		t.Errorf("metrics should be disabled, got %q", cfg.Metrics.Listen)
	}
}

// Every invalid configuration is refused with the position of the fault.
func TestInvalidConfigsNamePosition(t *testing.T) {
	for _, tc := range []struct {
		name, src, want string
	}{
		{"syntax", "policy_dir = \n", "m.hcl:1:"},
		{"unknown attribute", "policy_dir = \"/a\"\npolicy_dri = \"/b\"\n", "m.hcl:2:1: error: Unsupported argument"},
		{"unknown block", "metric {\n}\n", "m.hcl:1:1: error: Unsupported block type"},
		{"bad enforcement", "\n  enforcement = \"sometimes\"\n", `m.hcl:2:3: error: invalid enforcement "sometimes": must be one of "default", "always", "never"`},
		{"bad unknown_endpoint", "unknown_endpoint = \"pass\"\n", `m.hcl:1:1: error: invalid unknown_endpoint "pass"`},
		{"bad attach", "attach = \"xdp\"\n", `m.hcl:1:1: error: invalid attach "xdp"`},
		{"bad log level", "log_level = \"loud\"\n", `m.hcl:1:1: error: invalid log_level "loud"`},
		{"wrong type", "audit = \"yes please\"\n", "m.hcl:1:10: error: Unsuitable value type"},
		{"relative path", "state_dir = \"var/lib\"\n", "m.hcl:1:1: error: state_dir must be an absolute path"},
		{"unknown runtime", "runtime \"podman\" {\n}\n", `m.hcl:1:1: error: unknown runtime "podman"`},
		{"duplicate runtime", "runtime \"docker\" {\n}\nruntime \"docker\" {\n}\n", `m.hcl:3:1: error: runtime "docker" already declared at m.hcl:1`},
		{"docker namespaces", "runtime \"docker\" {\n  namespaces = [\"x\"]\n}\n", "m.hcl:2:3: error: namespaces is only for containerd"},
		{"bad regexp", "labels {\n  exclude = [\"(\"]\n}\n", `m.hcl:2:14: error: invalid regular expression "(" in exclude`},
		{"bad regexp, second", "labels {\n  include = [\"^app$\", \"a[\"]\n}\n", `m.hcl:2:23: error: invalid regular expression "a[" in include`},
		{"map too small", "maps {\n  endpoints = 1\n}\n", "m.hcl:2:3: error: maps.endpoints = 1 is out of range"},
		{"ring not power of two", "maps {\n  events = 5000\n}\n", "m.hcl:2:3: error: maps.events = 5000 is not a valid ring buffer size"},
		{"bad listen", "metrics {\n  listen = \"9964\"\n}\n", `m.hcl:2:3: error: invalid metrics listen address "9964"`},
		// What membraned could not listen on, found before it starts (it
		// stopped at start, --check-config having said valid).
		{"listen port too big", "metrics {\n  listen = \"localhost:99999\"\n}\n", `m.hcl:2:3: error: invalid metrics listen address "localhost:99999"`},
		{"listen port zero", "metrics {\n  listen = \"127.0.0.1:0\"\n}\n", `m.hcl:2:3: error: invalid metrics listen address "127.0.0.1:0"`},
		{"listen port by name", "metrics {\n  listen = \"127.0.0.1:http\"\n}\n", `m.hcl:2:3: error: invalid metrics listen address "127.0.0.1:http"`},
		{"listen bad address", "metrics {\n  listen = \"300.1.1.1:9964\"\n}\n", `m.hcl:2:3: error: invalid metrics listen address "300.1.1.1:9964"`},
		{"listen host name", "metrics {\n  listen = \"metrics.example:9964\"\n}\n", `m.hcl:2:3: error: invalid metrics listen address "metrics.example:9964"`},
		{"bad bridge pattern", "bridges = [\"docker0\", \"br-[\"]\n", `m.hcl:1:23: error: invalid bridge pattern "br-["`},
		{"bad audit selector", "audit_selector = \"app in (\"\n", `m.hcl:1:26: error: invalid audit_selector: unclosed '('`},
		{"bad audit selector, blanks", "audit_selector = \"  app=a,,\"\n", `m.hcl:1:27: error: invalid audit_selector: empty requirement`},
		{"bad audit selector, escapes", "audit_selector = \"\\u0061=a,,\"\n", `m.hcl:1:18: error: invalid audit_selector: empty requirement`},
		{"negative flow sample", "flow_sample = -1\n", "m.hcl:1:1: error: invalid flow_sample -1"},
		// Blanks or a line break at the ends of a path, a group or a
		// bridge name (a heredoc ends with one) name nothing that
		// exists: the daemon waited for a policy directory that never
		// came, or managed no bridge, with a valid configuration.
		{"heredoc path", "policy_dir = <<EOT\n/etc/membrane/policies.d\nEOT\n", `m.hcl:1:1: error: policy_dir has a blank or control character: "/etc/membrane/policies.d\n"`},
		{"path with a trailing blank", "state_dir = \"/var/lib/membrane \"\n", `m.hcl:1:1: error: state_dir has a blank or control character`},
		{"socket with a trailing blank", "runtime \"docker\" {\n  socket = \"/var/run/docker.sock \"\n}\n", `m.hcl:2:3: error: socket has a blank or control character`},
		{"bpffs root", "bpffs_dir = \"/sys/fs/bpf/\"\n", `m.hcl:1:1: error: bpffs_dir must be a directory of its own below /sys/fs/bpf`},
		{"bpffs root's parent", "bpffs_dir = \"/sys\"\n", `m.hcl:1:1: error: bpffs_dir must be a directory of its own below /sys/fs/bpf`},
		{"group with a blank", "api_group = \"membrane \"\n", `m.hcl:1:1: error: api_group has a blank or control character`},
		{"bridge with a blank", "bridges = [\"docker0\", \"br-* \"]\n", `m.hcl:1:23: error: invalid bridge pattern "br-* "`},
		{"bad duration", "identity_grace = \"soon\"\n", `m.hcl:1:1: error: invalid identity_grace "soon"`},
		{"unknown attr in block", "maps {\n  endpoint = 5\n}\n", "m.hcl:2:3: error: Unsupported argument"},
		{"bad l7 engine", "l7 {\n  engine = \"nginx\"\n}\n", `m.hcl:2:3: error: invalid l7 engine "nginx": must be one of "auto", "builtin", "envoy"`},
		{"l7 port zero", "l7 {\n  port = 0\n}\n", "m.hcl:2:3: error: l7.port = 0 is out of range"},
		{"l7 port too big", "l7 {\n  port = 70000\n}\n", "m.hcl:2:3: error: l7.port = 70000 is out of range"},
		{"l7 no connections", "l7 {\n  max_connections = 0\n}\n", "m.hcl:2:3: error: l7.max_connections = 0 is out of range"},
		{"l7 negative per source", "l7 {\n\n  max_connections_per_source = -5\n}\n", "m.hcl:3:3: error: l7.max_connections_per_source = -5 is out of range"},
		{"l7 bad unit", "l7 {\n  envoy_unit = \"envoy\"\n}\n", `m.hcl:2:3: error: invalid l7.envoy_unit "envoy"`},
		{"l7 unit with builtin", "l7 {\n  engine = \"builtin\"\n  envoy_unit = \"membrane-envoy.service\"\n}\n", `m.hcl:3:3: error: l7.envoy_unit is set but engine is "builtin"`},
		{"l7 twice", "l7 {\n}\nl7 {\n}\n", "m.hcl:3:1: error: l7 block already declared at m.hcl:1"},
		{"l7 unknown attr", "l7 {\n  engin = \"auto\"\n}\n", "m.hcl:2:3: error: Unsupported argument"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("m.hcl", []byte(tc.src))
			if err == nil {
				t.Fatal("invalid config accepted")
			}
			var ce *Error
			if !errors.As(err, &ce) {
				t.Fatalf("error is %T, want *config.Error: %v", err, err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error\n  %s\nwant it to contain\n  %s", err, tc.want)
			}
		})
	}
}

func TestSeveralErrorsAreAllReported(t *testing.T) {
	_, err := Parse("m.hcl", []byte("attach = \"x\"\nenforcement = \"y\"\n"))
	if err == nil {
		t.Fatal("accepted")
	}
	if !strings.Contains(err.Error(), "m.hcl:1:1") || !strings.Contains(err.Error(), "m.hcl:2:1") {
		t.Fatalf("want both positions, got %v", err)
	}
}

// A file with a misspelt or mistyped attribute still has its other
// attributes checked: one --check-config run shows every mistake, in the
// order of the file.
func TestErrorsOfEveryKindAreReportedTogether(t *testing.T) {
	src := "log_levle = \"debug\"\nlog_level = \"loud\"\nl7 {\n  port = \"x\"\n  engine = \"nginx\"\n}\n"
	_, err := Parse("m.hcl", []byte(src))
	if err == nil {
		t.Fatal("accepted")
	}
	var positions []string
	for _, d := range err.(*Error).Diagnostics {
		positions = append(positions, short(*d.Subject))
	}
	want := []string{"m.hcl:1", "m.hcl:2", "m.hcl:4", "m.hcl:5"}
	if strings.Join(positions, " ") != strings.Join(want, " ") {
		t.Fatalf("errors at %v, want %v:\n%v", positions, want, err)
	}
}

// An attribute whose value does not decode gets that error alone: gohcl
// leaves some such attributes at their zero value (a fraction for a whole
// number, an interpolation), and judging that value added an error about
// something the file does not say ("l7.port = 0 is out of range",
// "policy_dir must be an absolute path: got \"\""), and HCL's "value must
// be known" beside the error of an interpolation is left out.
func TestUndecodableValueIsNotAlsoJudged(t *testing.T) {
	for _, tc := range []struct{ src, want string }{
		{"l7 {\n  port = 15001.5\n}\n", "m.hcl:2:10: error: Unsuitable value type"},
		{"maps {\n  events = 4096.5\n}\n", "m.hcl:2:12: error: Unsuitable value type"},
		{"flow_sample = 0.5\n", "m.hcl:1:15: error: Unsuitable value type"},
		{"policy_dir = \"${x}\"\n", "m.hcl:1:17: error: Variables not allowed"},
		{"log_level = \"${x}\"\n", "m.hcl:1:16: error: Variables not allowed"},
	} {
		_, err := Parse("m.hcl", []byte(tc.src))
		if err == nil {
			t.Fatalf("%q accepted", tc.src)
		}
		var lines []string
		for _, d := range err.(*Error).Diagnostics {
			lines = append(lines, fmt.Sprintf("%s: error: %s", short(*d.Subject)+fmt.Sprintf(":%d", d.Subject.Start.Column), d.Summary))
		}
		if len(lines) != 1 || lines[0] != tc.want {
			t.Errorf("%q: errors\n  %s\nwant only\n  %s", tc.src, strings.Join(lines, "\n  "), tc.want)
		}
	}
}

// A configuration saved as UTF-16 is one error, not one per NUL byte.
func TestUTF16ConfigIsOneError(t *testing.T) {
	src := []byte{0xff, 0xfe}
	for _, c := range "audit = true\n" {
		src = append(src, byte(c), 0)
	}
	_, err := Parse("m.hcl", src)
	var ce *Error
	if !errors.As(err, &ce) || len(ce.Diagnostics) != 1 || !strings.HasPrefix(err.Error(), "m.hcl:1:1: error: File is UTF-16") {
		t.Fatalf("error: %v", err)
	}
}

// A blank inside a path may be meant.
func TestPathWithABlankInside(t *testing.T) {
	c, err := Parse("m.hcl", []byte("policy_dir = \"/srv/my policies\"\n"))
	if err != nil || c.PolicyDir != "/srv/my policies" {
		t.Fatalf("policy_dir with a blank inside: %v", err)
	}
}

// The listen addresses membraned can listen on are valid.
func TestMetricsListenAddresses(t *testing.T) {
	for _, l := range []string{"127.0.0.1:9964", "[::1]:9964", ":9964", "localhost:9964", "0.0.0.0:1", "[fe80::1%eth0]:65535", ""} {
		c, err := Parse("m.hcl", []byte("metrics {\n  listen = \""+l+"\"\n}\n"))
		if err != nil || c.Metrics.Listen != l {
			t.Errorf("listen = %q: %v", l, err)
		}
	}
}

func TestL7BlockDecodes(t *testing.T) {
	c, err := Parse("m.hcl", []byte("l7 {\n  engine = \"envoy\"\n  port = 15555\n  envoy_unit = \"membrane-envoy.service\"\n  max_connections = 100\n  max_connections_per_source = 10\n}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.L7 != (L7{Engine: L7Envoy, Port: 15555, EnvoyUnit: "membrane-envoy.service", MaxConnections: 100, MaxConnectionsPerSource: 10}) {
		t.Fatalf("l7 = %+v", c.L7)
	}
	if d := Default().L7; d != (L7{Engine: L7Auto, Port: DefaultL7Port, MaxConnections: 16384, MaxConnectionsPerSource: 4096}) {
		t.Fatalf("default l7 = %+v", d)
	}
}

// TestBlankAuditSelectorAuditsNone: audit_selector = "" audits no endpoint
// (the shipped configurations say so); one of blanks must not be parsed
// as the policy language's empty selector, which selects every endpoint
// and would turn enforcement into audit for all.
func TestBlankAuditSelectorAuditsNone(t *testing.T) {
	for _, v := range []string{"", " ", "\t  "} {
		c, err := Parse("m.hcl", []byte("audit_selector = \""+v+"\"\n"))
		if err != nil {
			t.Fatalf("audit_selector = %q: %v", v, err)
		}
		if c.AuditSelector != "" || c.Audit {
			t.Errorf("audit_selector = %q: AuditSelector %q, Audit %v; want no endpoint audited", v, c.AuditSelector, c.Audit)
		}
	}
}

func TestExampleConfigIsValid(t *testing.T) {
	path := "../../examples/membrane.hcl"
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("examples/membrane.hcl missing: %v", err)
	}
	if _, err := Load(path, true); err != nil {
		t.Fatal(err)
	}
}

// A configuration nested past what HCL's recursive parser can take is an
// error with its position, not a fatal stack overflow of membraned (the
// stack is bounded here so that a parser that still recurses fails fast).
func TestDeepNestingIsAnErrorNotACrash(t *testing.T) {
	defer debug.SetMaxStack(debug.SetMaxStack(32 << 20))
	const n = 20000
	_, err := Parse("membrane.hcl", []byte("bridges = "+strings.Repeat("[", n)+strings.Repeat("]", n)+"\n"))
	if err == nil || !strings.Contains(err.Error(), "membrane.hcl:1:") || !strings.Contains(err.Error(), "Nesting too deep") {
		t.Errorf("err = %v", err)
	}
}

// `membraned --cleanup` with a file Load rejects: the pins it names are
// still the ones to take down, when the file still says them readably.
func TestSalvageKeepsTheReadablePinDirectory(t *testing.T) {
	def := Default()
	for _, c := range []struct {
		name, text       string
		bpffs, apiSocket string
	}{
		{"invalid elsewhere", "bpffs_dir = \"/sys/fs/bpf/prod//\"\napi_socket = \"/run/m/api.sock\"\nenforcement = \"sometimes\"\nruntime \"docker\" {\n  enabled = \"maybe\"\n}\n",
			"/sys/fs/bpf/prod", "/run/m/api.sock"},
		{"syntax error after it", "bpffs_dir = \"/sys/fs/bpf/prod\"\nmaps {\n", "/sys/fs/bpf/prod", def.APISocket},
		{"relative", "bpffs_dir = \"prod\"\n", def.BPFFSDir, def.APISocket},
		{"not a literal", "bpffs_dir = var.dir\n", def.BPFFSDir, def.APISocket},
		{"not a string", "bpffs_dir = 3\n", def.BPFFSDir, def.APISocket},
		{"missing", "", def.BPFFSDir, def.APISocket},
	} {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "membrane.hcl")
			if c.name != "missing" {
				if err := os.WriteFile(path, []byte(c.text), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			got := Salvage(path)
			if got.BPFFSDir != c.bpffs || got.APISocket != c.apiSocket {
				t.Errorf("Salvage: bpffs_dir %q, api_socket %q; want %q, %q", got.BPFFSDir, got.APISocket, c.bpffs, c.apiSocket)
			}
		})
	}
}

// Every duration and count of the top level has bounds on both sides, and
// a value outside them is an error at its position that names them:
// policy_debounce = "1000000h" held every policy change back for a
// century, and flow_sample = 4294967297 reached the datapath as 1 (every
// allowed flow reported; 4294967296 as 0, none), both accepted silently.
func TestDurationsAndCountsAreBounded(t *testing.T) {
	for _, tc := range []struct{ src, want string }{
		{"\npolicy_debounce = \"1000000h\"\n", `m.hcl:2:1: error: invalid policy_debounce "1000000h": must be a duration between 0s and 10s, like "50ms"`},
		{"policy_debounce = \"11s\"\n", `between 0s and 10s`},
		{"policy_debounce = \"-1ms\"\n", `between 0s and 10s`},
		{"identity_grace = \"9999999999999h\"\n", `m.hcl:1:1: error: invalid identity_grace "9999999999999h": must be a duration between 0s and 24h, like "5m"`},
		{"identity_grace = \"25h\"\n", `between 0s and 24h`},
		{"resync_interval = \"500ms\"\n", `invalid resync_interval "500ms": must be a duration between 1s and 1h, like "1m"`},
		{"resync_interval = \"2h\"\n", `between 1s and 1h`},
		{"resync_interval = \"5\"\n", `invalid resync_interval "5": must be a duration between 1s and 1h, like "1m" (a number needs a unit: ms, s, m or h)`},
		{"flow_sample = 4294967297\n", `m.hcl:1:1: error: invalid flow_sample 4294967297: must be 0 (no allowed flows reported) or N from 1 to 1000000 (one new allowed flow in N)`},
		{"flow_sample = 1000001\n", `invalid flow_sample 1000001`},
		{"flow_sample = -1\n", `invalid flow_sample -1`},
	} {
		_, err := Parse("m.hcl", []byte(tc.src))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v, want %q", tc.src, err, tc.want)
		}
	}
	for _, src := range []string{"policy_debounce = \"0s\"\n", "policy_debounce = \"10s\"\n", "identity_grace = \"0s\"\n", "identity_grace = \"24h\"\n",
		"resync_interval = \"1s\"\n", "resync_interval = \"1h\"\n", "flow_sample = 0\n", "flow_sample = 1000000\n"} {
		if _, err := Parse("m.hcl", []byte(src)); err != nil {
			t.Errorf("%q refused: %v", src, err)
		}
	}
}

// A count that is not a whole number, or past what Go's int holds, is told
// with the attribute's own bounds, not HCL's "between
// -9223372036854775808 and 9223372036854775807", which no count here may
// be.
func TestUndecodableCountNamesItsBounds(t *testing.T) {
	for _, tc := range []struct{ src, want string }{
		{"maps {\n  endpoints = 1e30\n}\n", "m.hcl:2:15: error: Unsuitable value type: maps.endpoints must be a whole number from 16 to 1048576"},
		{"maps {\n  events = 4096.5\n}\n", "m.hcl:2:12: error: Unsuitable value type: maps.events must be a whole number, a power of two from 4096 to 1073741824"},
		{"flow_sample = 0.5\n", "m.hcl:1:15: error: Unsuitable value type: flow_sample must be a whole number from 0 to 1000000"},
		{"l7 {\n  port = 15001.5\n}\n", "m.hcl:2:10: error: Unsuitable value type: l7.port must be a whole number from 1 to 65535"},
		{"l7 {\n  max_connections_per_source = 1e20\n}\n", "l7.max_connections_per_source must be a whole number from 1 to 1048576"},
	} {
		_, err := Parse("m.hcl", []byte(tc.src))
		if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "9223372036854775807") {
			t.Errorf("%q: error %v, want %q", tc.src, err, tc.want)
		}
	}
}

// The L7 proxy and the metrics cannot listen on the same TCP port (the
// proxy takes it on every address): --check-config says so at l7.port,
// rather than pass a file the daemon would stop on at start.
func TestL7PortAndMetricsPortDiffer(t *testing.T) {
	for _, src := range []string{
		"metrics {\n  listen = \"127.0.0.1:15001\"\n}\n",
		"metrics {\n  listen = \":9000\"\n}\nl7 {\n  port = 9000\n}\n",
	} {
		_, err := Parse("m.hcl", []byte(src))
		if err == nil || !strings.Contains(err.Error(), "is also metrics.listen's port") {
			t.Errorf("%q: error %v", src, err)
		}
	}
	if _, err := Parse("m.hcl", []byte("metrics {\n  listen = \"\"\n}\nl7 {\n  port = 9964\n}\n")); err != nil {
		t.Errorf("metrics off, l7 on 9964: %v", err)
	}
}

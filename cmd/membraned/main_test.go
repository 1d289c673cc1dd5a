package main

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

func TestExitCodes(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.hcl")
	os.WriteFile(bad, []byte("policy_dir = \"/p\"\n\nenforcement = \"sometimes\"\n"), 0o644)
	good := filepath.Join(dir, "good.hcl")
	os.WriteFile(good, []byte("enforcement = \"always\"\n"), 0o644)
	for _, tc := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"unknown flag", []string{"--bogus"}, 2, "flag provided but not defined"},
		{"stray argument", []string{"run"}, 2, `unexpected argument "run"`},
		// An empty --config (an unset variable in a unit's ExecStart) is
		// a mistake in the command, not "open : no such file" (exit 1).
		{"empty config path", []string{"--config", "", "--check-config"}, 2, `membraned: --config "": want the path of membrane.hcl`},
		{"bad log format", []string{"--config", good, "--log-format", "xml"}, 2, "--log-format"},
		{"bad log format with a mode", []string{"--log-format", "xml", "--version"}, 2, "--log-format"},
		{"invalid config names file:line:col", []string{"--config", bad}, 1, bad + `:3:1: error: invalid enforcement "sometimes"`},
		{"missing explicit config", []string{"--config", filepath.Join(dir, "nope.hcl")}, 1, "no such file"},
		{"check valid config", []string{"--config", good, "--check-config"}, 0, ""},
		{"check invalid config", []string{"--config", bad, "--check-config"}, 1, "membraned: invalid configuration\n"},
		// Two modes are a usage error: neither is done (with an invalid
		// file, --cleanup --check-config used to end "configuration is
		// valid", exit 0, after saying it would clean up).
		{"check and cleanup", []string{"--config", bad, "--check-config", "--cleanup"}, 2, "at most one of --cleanup, --check-config and --version"},
		{"check and version", []string{"--config", good, "--version", "--check-config"}, 2, "at most one of"},
		{"cleanup and version", []string{"--config", good, "--cleanup", "--version"}, 2, "at most one of"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stderr bytes.Buffer
			code := run(context.Background(), tc.args, io.Discard, &stderr)
			if code != tc.code {
				t.Fatalf("exit %d, want %d; stderr: %s", code, tc.code, stderr.String())
			}
			if !strings.Contains(stderr.String(), tc.want) {
				t.Fatalf("stderr %q lacks %q", stderr.String(), tc.want)
			}
		})
	}
}

// envoy_unit is handed to systemctl start and stop: a name systemd's unit
// grammar does not allow is refused by --check-config with its position.
// "*.service" was taken, and systemctl reads it as a pattern (stop every
// loaded service when membraned stops); "--host=h.service" as an option.
func TestCheckConfigRefusesEnvoyUnitOutsideSystemdGrammar(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct{ unit, want string }{
		{"*.service", `invalid l7.envoy_unit "*.service": "*" is not allowed in a unit name`},
		{"membrane-envoy?.service", `"?" is not allowed in a unit name`},
		{"membrane-[ab].service", `"[" is not allowed in a unit name`},
		{"--host=h.service", `a unit name must not begin with "-"`},
		{".service", `the name before ".service" is empty`},
		{"envoy@.service", `"envoy@.service" is a template: name an instance, as "envoy@main.service"`},
		{"@main.service", `the name before "@" is empty`},
		{"envoy.socket", `must end in ".service"`},
		{"café.service", `"é" is not allowed in a unit name`},
		{strings.Repeat("e", 248) + ".service", `256 bytes long: systemd takes at most 255`},
	} {
		t.Run(tc.unit, func(t *testing.T) {
			cfg := filepath.Join(dir, "m.hcl")
			os.WriteFile(cfg, []byte("l7 {\n  engine = \"envoy\"\n  envoy_unit = \""+tc.unit+"\"\n}\n"), 0o644)
			var stderr bytes.Buffer
			if code := run(context.Background(), []string{"--config", cfg, "--check-config"}, io.Discard, &stderr); code != 1 {
				t.Fatalf("exit %d, want 1; stderr: %s", code, stderr.String())
			}
			if !strings.Contains(stderr.String(), cfg+":3:3: error: ") || !strings.Contains(stderr.String(), tc.want) {
				t.Fatalf("stderr %q lacks %s:3:3 and %q", stderr.String(), cfg, tc.want)
			}
		})
	}
	for _, unit := range []string{"membrane-envoy.service", "envoy@main.service", `envoy\\x2dedge.service`, "a:b_c.d-e.service", strings.Repeat("e", 247) + ".service"} {
		cfg := filepath.Join(dir, "ok.hcl")
		os.WriteFile(cfg, []byte("l7 {\n  engine = \"envoy\"\n  envoy_unit = \""+unit+"\"\n}\n"), 0o644)
		var stderr bytes.Buffer
		if code := run(context.Background(), []string{"--config", cfg, "--check-config"}, io.Discard, &stderr); code != 0 {
			t.Fatalf("envoy_unit %q: exit %d, want 0; stderr: %s", unit, code, stderr.String())
		}
	}
}

// --help prints the usage on standard output (it was asked for), with the
// flags spelled as the usage line, the docs and membraned(8), which is
// made from this output, spell them: --config, not Go's -config. Both
// spellings still parse, as they always did, and an error names the flag
// with two dashes too.
func TestHelpSpellsFlagsWithTwoDashes(t *testing.T) {
	for _, h := range []string{"--help", "-h", "-help"} {
		var stdout, stderr bytes.Buffer
		if code := run(context.Background(), []string{h}, &stdout, &stderr); code != 0 {
			t.Fatalf("%s: exit %d", h, code)
		}
		out := stdout.String()
		if stderr.Len() != 0 {
			t.Errorf("%s wrote to stderr: %q", h, stderr.String())
		}
		for _, want := range []string{"Usage: membraned [--config PATH]", "\n  --config PATH\n", "\n  --cleanup\n", "\n  --check-config\n", "\n  --log-format FORMAT\n", "\n  --version\n", `(default "/etc/membrane/membrane.hcl")`} {
			if !strings.Contains(out, want) {
				t.Errorf("%s: output lacks %q:\n%s", h, want, out)
			}
		}
		if regexp.MustCompile(`(?m)^\s+-[a-z]`).MatchString(out) {
			t.Errorf("%s: a flag is spelt with one dash:\n%s", h, out)
		}
	}
	dir := t.TempDir()
	good := filepath.Join(dir, "good.hcl")
	os.WriteFile(good, []byte("enforcement = \"always\"\n"), 0o644)
	for _, args := range [][]string{{"--check-config", "--config", good}, {"-check-config", "-config", good}, {"--check-config", "--config=" + good}, {"-check-config", "-config=" + good}} {
		var stdout, stderr bytes.Buffer
		if code := run(context.Background(), args, &stdout, &stderr); code != 0 || !strings.Contains(stdout.String(), "configuration is valid") {
			t.Errorf("%v: exit %d, stdout %q, stderr %q", args, code, stdout.String(), stderr.String())
		}
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--bogus"}, "membraned: flag provided but not defined: --bogus\n"},
		{[]string{"-bogus"}, "membraned: flag provided but not defined: --bogus\n"},
		{[]string{"--config"}, "membraned: flag needs an argument: --config\n"},
		{[]string{"--cleanup=maybe"}, `membraned: invalid boolean value "maybe" for --cleanup`},
	} {
		var stdout, stderr bytes.Buffer
		if code := run(context.Background(), tc.args, &stdout, &stderr); code != 2 || stdout.Len() != 0 || !strings.HasPrefix(stderr.String(), tc.want) {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want exit 2, stderr starting %q", tc.args, code, stdout.String(), stderr.String(), tc.want)
		}
	}
}

package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
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
		{"bad log format", []string{"--config", good, "--log-format", "xml"}, 2, "--log-format"},
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
			code := run(context.Background(), tc.args, &stderr)
			if code != tc.code {
				t.Fatalf("exit %d, want %d; stderr: %s", code, tc.code, stderr.String())
			}
			if !strings.Contains(stderr.String(), tc.want) {
				t.Fatalf("stderr %q lacks %q", stderr.String(), tc.want)
			}
		})
	}
}

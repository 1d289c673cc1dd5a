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

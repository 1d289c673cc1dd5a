package main

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"testing"
)

// Every `membraned --flag` in the README, the docs, the examples, the
// packaging's files and the systemd unit is a flag membraned has.
func TestDocumentedFlagsExist(t *testing.T) {
	var help bytes.Buffer
	if code := run(context.Background(), []string{"--help"}, &help, io.Discard); code != 0 {
		t.Fatalf("--help: exit %d", code)
	}
	known := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^  --?([a-z][a-z-]*)`).FindAllStringSubmatch(help.String(), -1) {
		known[m[1]] = true
	}
	if !known["cleanup"] {
		t.Fatalf("read no flags from --help:\n%s", help.String())
	}
	var files []string
	for _, g := range []string{"../../README.md", "../../docs/*.md", "../../examples/*/README.md", "../../packaging/files/*", "../../packaging/files/scripts/*", "../../systemd/*", "../../proxy/envoy/*.service"} {
		m, _ := filepath.Glob(g)
		files = append(files, m...)
	}
	cmd := regexp.MustCompile("(?:(\\S+) +)?membraned((?: +--?[a-z][a-z-]*(?: +[^-\\s`|]\\S*)?)+)")
	flag := regexp.MustCompile(`--?([a-z][a-z-]*)`)
	seen := 0
	for _, f := range files {
		src, err := os.ReadFile(f)
		if err != nil {
			continue // a directory
		}
		for _, m := range cmd.FindAllStringSubmatch(string(src), -1) {
			if m[1] == "-u" || m[1] == "--unit" {
				continue // journalctl -u membraned -e: the unit, not the binary
			}
			for _, fm := range regexp.MustCompile(`(?:^|\s)(--?[a-z][a-z-]*)`).FindAllStringSubmatch(m[2], -1) {
				name := flag.FindStringSubmatch(fm[1])[1]
				seen++
				if !known[name] {
					t.Errorf("%s: `membraned%s`: membraned has no flag %s", f, m[2], fm[1])
				}
			}
		}
	}
	if seen < 5 {
		t.Fatalf("found only %d membraned flags in the docs: the scan is broken", seen)
	}
}

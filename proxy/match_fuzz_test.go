package proxy

import (
	"strings"
	"testing"
)

// FuzzNormalizePath: the judged path is absolute, has no dot segments or
// empty segments, and normalizing it again changes nothing — so no spelling
// of a path is judged as another path than the one the server will see.
func FuzzNormalizePath(f *testing.F) {
	for _, s := range []string{"/", "/a/../b", "//x//y/", "/./.", "/a/b/../../..", "x/y", "/%2e%2e/", "/a/./b/."} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		n := NormalizePath(p)
		if !strings.HasPrefix(n, "/") {
			t.Fatalf("NormalizePath(%q) = %q, not absolute", p, n)
		}
		for _, seg := range strings.Split(strings.Trim(n, "/"), "/") {
			if seg == "." || seg == ".." || (seg == "" && n != "/") {
				t.Fatalf("NormalizePath(%q) = %q keeps segment %q", p, n, seg)
			}
		}
		if again := NormalizePath(n); again != n {
			t.Fatalf("NormalizePath not idempotent: %q -> %q -> %q", p, n, again)
		}
	})
}

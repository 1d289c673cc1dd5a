package testenv

import (
	"os/exec"
	"testing"
)

// RequireEnvoy returns the path of the `envoy` binary, or skips the test
// with the reason "envoy not on PATH" — in CI too. It is the one allowed
// exception to "never skip in CI": Envoy is an optional engine that Debian
// does not package, so a machine without it cannot run the Envoy end-to-end
// tests, and the built-in engine's tests cover the same conformance suite.
// The Envoy engine's translation, bootstrap and xDS serving are tested
// without the binary and never skip.
func RequireEnvoy(t testing.TB) string {
	t.Helper()
	p, err := exec.LookPath("envoy")
	if err != nil {
		t.Skip("envoy not on PATH")
	}
	return p
}

package proxy

import (
	"errors"
	"testing"
)

func TestChooseEngineAutoPrefersEnvoyOnPath(t *testing.T) {
	with := func(string) (string, error) { return "/usr/bin/envoy", nil }
	without := func(string) (string, error) { return "", errors.New("not found") }
	for _, c := range []struct {
		kind   string
		look   func(string) (string, error)
		want   string
		path   string
		hasErr bool
	}{
		{"auto", with, EngineEnvoy, "/usr/bin/envoy", false},
		{"auto", without, EngineBuiltin, "", false},
		{"", without, EngineBuiltin, "", false},
		{"builtin", with, EngineBuiltin, "", false},
		{"envoy", with, EngineEnvoy, "/usr/bin/envoy", false},
		{"envoy", without, "", "", true},
		{"nginx", with, "", "", true},
	} {
		got, path, err := ChooseEngine(c.kind, c.look)
		if got != c.want || path != c.path || (err != nil) != c.hasErr {
			t.Errorf("ChooseEngine(%q) = %q, %q, %v; want %q, %q, error %v", c.kind, got, path, err, c.want, c.path, c.hasErr)
		}
	}
}

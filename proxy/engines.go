package proxy

import (
	"fmt"
	"os/exec"
)

// Engine kinds of the config's `l7 { engine = ... }`.
const (
	EngineAuto    = "auto"
	EngineBuiltin = "builtin"
	EngineEnvoy   = "envoy"
)

// ChooseEngine resolves the configured engine kind: "auto" is envoy when an
// `envoy` binary is on PATH, else builtin. It returns the engine name and,
// for envoy, the binary's path. lookPath is exec.LookPath outside tests.
func ChooseEngine(kind string, lookPath func(string) (string, error)) (name, envoyPath string, err error) {
	if lookPath == nil {
		lookPath = exec.LookPath
	}
	switch kind {
	case EngineBuiltin:
		return EngineBuiltin, "", nil
	case EngineEnvoy:
		p, err := lookPath("envoy")
		if err != nil {
			return "", "", fmt.Errorf(`l7 engine "envoy": %w (install Envoy, or set engine = "auto" or "builtin")`, err)
		}
		return EngineEnvoy, p, nil
	case EngineAuto, "":
		if p, err := lookPath("envoy"); err == nil {
			return EngineEnvoy, p, nil
		}
		return EngineBuiltin, "", nil
	}
	return "", "", fmt.Errorf(`l7 engine %q: must be "auto", "builtin" or "envoy"`, kind)
}

package proxy

import (
	"os/exec"
	"strings"
	"testing"
)

// The L7 layer builds on the policy model only: the daemon wires it to the
// datapath and the runtime, never the other way round.
func TestProxyImportsNoDaemonDatapathOrRuntime(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "./...").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for _, dep := range strings.Fields(string(out)) {
		for _, banned := range []string{"/membrane/bpf", "/membrane/daemon", "/membrane/runtime", "/membrane/cmd"} {
			if strings.Contains(dep, "membrane-fw"+banned) {
				t.Errorf("proxy depends on %s", dep)
			}
		}
	}
}

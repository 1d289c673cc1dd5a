package docker

import (
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/membrane-fw/membrane/internal/testenv"
	"github.com/membrane-fw/membrane/runtime/endpoint"
	"github.com/membrane-fw/membrane/runtime/internal/runtimetest"
)

// testLabel is put on every container a test makes, so the test counts only
// its own (other areas' tests share this dockerd).
const testLabel = "membrane.test.runtime"

func startSource(t *testing.T) (*Source, *runtimetest.Collector) {
	t.Helper()
	src := New(Config{
		Logger:     runtimetest.Logger(),
		MinBackoff: 50 * time.Millisecond,
		MaxBackoff: time.Second,
	})
	// Long waits: a colleague's test may restart the shared dockerd.
	return src, runtimetest.StartSource(t, src, 120*time.Second)
}

// byName finds the endpoint that holds container name.
func byName(state map[string]endpoint.Endpoint, name string) (endpoint.Endpoint, bool) {
	for _, ep := range state {
		for _, c := range ep.Containers {
			if c.Name == name {
				return ep, true
			}
		}
	}
	return endpoint.Endpoint{}, false
}

func docker(t testing.TB, args ...string) string {
	t.Helper()
	return strings.TrimSpace(runtimetest.Run(t, append([]string{"docker"}, args...)...))
}

// testRun is one test's unique label value and name prefix, with cleanup of
// every container carrying the label.
func testRun(t *testing.T) (prefix, label string) {
	t.Helper()
	testenv.BusyboxImage(t)
	suffix := testenv.RandomSuffix(6)
	prefix = "rt-" + suffix
	label = testLabel + "=" + suffix
	t.Cleanup(func() {
		out, _ := exec.Command("docker", "ps", "-aq", "--filter", "label="+label).Output()
		if ids := strings.Fields(string(out)); len(ids) > 0 {
			_ = exec.Command("docker", append([]string{"rm", "-f"}, ids...)...).Run()
		}
	})
	return prefix, label
}

func dockerNetwork(t *testing.T, name string, opts ...string) string {
	t.Helper()
	id := docker(t, append(append([]string{"network", "create", "--label", testLabel + "=1"}, opts...), name)...)
	t.Cleanup(func() {
		// Cleanups run last first: the test's containers may still be
		// attached, and dockerd refuses to remove a network in use.
		out, _ := exec.Command("docker", "network", "inspect", "-f", "{{range $id, $c := .Containers}}{{$id}} {{end}}", name).Output()
		if ids := strings.Fields(string(out)); len(ids) > 0 {
			_ = exec.Command("docker", append([]string{"rm", "-f"}, ids...)...).Run()
		}
		_ = exec.Command("docker", "network", "rm", name).Run()
	})
	return id
}

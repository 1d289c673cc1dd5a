package bpf

import (
	"testing"

	"github.com/cilium/ebpf"

	"github.com/membrane-fw/membrane/internal/testenv"
)

// verifierLimit is the kernel's limit on the instructions the verifier
// walks for one program (BPF_COMPLEXITY_LIMIT_INSNS); verifierHeadroom the
// share of it a program may use before this test fails, well before the
// kernel refuses to load it.
const (
	verifierLimit    = 1_000_000
	verifierHeadroom = 0.9
)

// TestVerifierBudget loads the datapath programs and reports how many
// instructions the verifier walked for each (`go test -run
// TestVerifierBudget -v ./bpf/`); it fails when one comes within 10% of
// the kernel's limit, so that a change that makes handle() costlier to
// verify is seen before the programs stop loading.
func TestVerifierBudget(t *testing.T) {
	h := newHarness(t, 0, Config{})
	for _, p := range []struct {
		name string
		prog *ebpf.Program
	}{{"membrane_ingress", h.dp.objs.MembraneIngress}, {"membrane_egress", h.dp.objs.MembraneEgress}} {
		info, err := p.prog.Info()
		if err != nil {
			t.Fatalf("%s: %v", p.name, err)
		}
		n, ok := info.VerifiedInstructions()
		if !ok {
			testenv.Skip(t, "the kernel does not report verified instructions (Linux 5.16 or later does)")
		}
		t.Logf("%s: %d verified instructions (%.1f%% of %d)", p.name, n, float64(n)*100/verifierLimit, verifierLimit)
		if float64(n) > verifierHeadroom*verifierLimit {
			t.Errorf("%s: the verifier walks %d instructions, within %.0f%% of the kernel's limit of %d", p.name, n, (1-verifierHeadroom)*100, verifierLimit)
		}
	}
}

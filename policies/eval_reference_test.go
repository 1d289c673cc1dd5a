package policies_test

// The Evaluator must give exactly Set.Evaluate's results on generated sets,
// with one Evaluator per set over many connections (see eval_index_test.go
// for the rest of its tests). The sets come from internal/policygen, hence
// an external test package.

import (
	"maps"
	"math/rand/v2"
	"reflect"
	"regexp"
	"slices"
	"testing"

	"github.com/membrane-fw/membrane/internal/policygen"
	"github.com/membrane-fw/membrane/policies"
)

func TestEvaluatorAgreesWithReference(t *testing.T) {
	r := rand.New(rand.NewPCG(*diffSeed, 7))
	cases, slow := 0, 0
	for n := 0; n < 500; n++ {
		g := genSet(r)
		w := genEnv(r)
		set := g.Build()
		// Some http blocks that refuse some requests.
		for _, rule := range set.Rules() {
			for i := range rule.HTTP {
				if r.IntN(2) == 0 {
					rule.HTTP[i].Method = regexp.MustCompile("^(?:GET)$")
				}
			}
		}
		// Sets whose rule IDs do not increase in set order (Load never
		// makes them; the Evaluator must still agree, through Set.Evaluate).
		if n%10 == 7 {
			for i, rule := range set.Rules() {
				rule.ID = uint32(100 - i%3)
			}
		}
		// Peers outside the Env (label sets first seen in Evaluate), and
		// HTTP requests on TCP connections.
		var outsiders []policies.IdentityLabels
		for range 3 {
			outsiders = append(outsiders, policies.IdentityLabels{Labels: policygen.Labels(r)})
		}
		conns := slices.Clone(w.conns)
		for range 20 {
			c := genConn(r, outsiders)
			if r.IntN(2) == 0 {
				c.From = genPeer(r, w.ids)
			}
			conns = append(conns, c)
		}
		for i := range conns {
			if conns[i].Proto == policies.ProtoTCP && r.IntN(3) == 0 {
				conns[i].HTTP = &policies.HTTPRequest{Method: policygen.Pick(r, []string{"GET", "POST"}), Path: "/"}
			}
		}

		ev := policies.NewEvaluator(set, w.env)
		if !ev.FastPath() {
			slow++
		}
		for pass := range 3 {
			for _, c := range conns {
				if pass == 2 { // the same label sets in new maps
					c.From.Labels, c.To.Labels = cloneLabels(c.From.Labels), cloneLabels(c.To.Labels)
				}
				want := set.Evaluate(w.env, c)
				if got := ev.Evaluate(c); !reflect.DeepEqual(got, want) {
					t.Fatalf("set %d pass %d: connection %+v\nEvaluator:    %+v\nSet.Evaluate: %+v\nenv: %+v\nset:\n%s", n, pass, c, got, want, w.env, g)
				}
				cases++
			}
		}
	}
	if slow == 0 {
		t.Fatal("no set took Set.Evaluate's path")
	}
	t.Logf("%d evaluations agree (%d sets outside the fast path)", cases, slow)
}

func cloneLabels(l policies.Labels) policies.Labels {
	if l == nil {
		return nil
	}
	return maps.Clone(l)
}

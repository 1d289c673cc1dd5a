package policies_test

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/membrane-fw/membrane/policies"
)

// FuzzCompiledModelAgreesWithEvaluator is the differential test driven by
// the fuzzer's seeds instead of one fixed seed.
func FuzzCompiledModelAgreesWithEvaluator(f *testing.F) {
	for i := uint64(0); i < 8; i++ {
		f.Add(i, i*7919)
	}
	f.Fuzz(func(t *testing.T, s1, s2 uint64) {
		r := rand.New(rand.NewPCG(s1, s2))
		g := genSet(r)
		w := genEnv(r)
		if msg, c := diffCase(g, w); msg != "" {
			min := shrink(g, w, c)
			t.Fatalf("%s\nconnection: %+v\nidentities: %v\nminimal set:\n%s", msg, c, w.ids, min)
		}
	})
}

// FuzzEvaluateParsedSet runs the differential check on policy sets that come
// from the loader (mutated policy files), so that whatever the loader
// accepts, the compiler and the evaluator agree on.
func FuzzEvaluateParsedSet(f *testing.F) {
	files, _ := filepath.Glob("testdata/semantics/*/*.hcl")
	for i, name := range files {
		if b, err := os.ReadFile(name); err == nil {
			f.Add(b, uint64(i))
		}
	}
	f.Fuzz(func(t *testing.T, src []byte, seed uint64) {
		set, rep := policies.Parse(policies.Source{Name: "fuzz.hcl", Bytes: src})
		if rep.HasErrors() || set == nil {
			return
		}
		r := rand.New(rand.NewPCG(seed, 1))
		w := genEnv(r)
		// Endpoints labelled like the policies' own selectors make matches likely.
		for i, p := range set.Policies {
			l := policies.Labels{}
			for _, req := range p.Selector.Requirements {
				if len(req.Values) > 0 {
					l[req.Key] = req.Values[0]
				} else if req.Op == policies.OpExists {
					l[req.Key] = ""
				}
			}
			if !hasLabels(w.ids, l) {
				w.ids = append(w.ids, policies.IdentityLabels{Identity: 5000 + policies.Identity(i), Labels: l})
				w.env.Endpoints = append(w.env.Endpoints, policies.Endpoint{Name: p.Name, Labels: l})
			}
		}
		for n := 0; n < 20; n++ {
			w.conns = append(w.conns, genConn(r, w.ids))
		}
		m, err := policies.Compile(set, w.ids, w.opts)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range w.conns {
			if msg := diffConn(set, m, w, c); msg != "" {
				t.Fatalf("%s\nconnection: %+v\nidentities: %v\nset:\n%s", msg, c, w.ids, src)
			}
		}
	})
}

func hasLabels(ids []policies.IdentityLabels, l policies.Labels) bool {
	for _, il := range ids {
		if policies.FormatLabels(il.Labels) == policies.FormatLabels(l) {
			return true
		}
	}
	return false
}

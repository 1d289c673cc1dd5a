package policies

// The differential oracle: Compile + Model.Verdict against the reference
// evaluator for one connection, end by end. It needs resolvePeer (which
// identity the datapath would see for a peer), so it is part of the
// package's own tests; the tests that generate sets with
// internal/policygen (which imports policies, so the package's internal
// tests cannot import it) are in the external package policies_test and
// reach it through ModelAgrees.

import (
	"fmt"
	"reflect"
	"slices"
)

// ModelAgrees returns "" when the model m compiled from set for ids gives
// both ends of c the evaluator's verdicts in env (and the Evaluator gives
// Set.Evaluate's result), else the first disagreement.
func ModelAgrees(set *Set, m *Model, ids []IdentityLabels, env *Env, c Connection) string {
	return diffConn(set, m, genWorld{ids: ids, env: env}, c)
}

// FastPath tells whether the Evaluator judges by its prepared tables
// (true) or by Set.Evaluate.
func (e *Evaluator) FastPath() bool { return e.fast }

// genWorld is the environment the oracle judges in: the identities the
// set was compiled for and the evaluator's Env.
type genWorld struct {
	ids []IdentityLabels
	env *Env
}

// modelRemote is the identity the datapath would see for a peer.
func modelRemote(m *Model, w genWorld, p Peer) (Identity, bool) {
	rp := resolvePeer(w.env, p)
	switch rp.kind {
	case peerEndpoint:
		for _, il := range w.ids {
			if FormatLabels(il.Labels) == FormatLabels(rp.labels) {
				return il.Identity, true
			}
		}
		panic("peer labels without identity")
	case peerHost:
		return IdentityHost, false
	case peerInit:
		return IdentityInit, false
	}
	if rp.ip.IsValid() {
		return m.AddrIdentity(rp.ip), false
	}
	return IdentityWorld, false
}

// compareEnd checks one end of the model against the evaluator's EndResult.
func compareEnd(m *Model, local Identity, isLocal bool, remote Identity, dir Direction, c Connection, want EndResult) string {
	if !isLocal {
		if want.Verdict != VerdictNotApplicable {
			return fmt.Sprintf("%s: evaluator says %s for a non-endpoint end", dir, want.Verdict)
		}
		return ""
	}
	port := c.Port
	if c.Proto == ProtoICMP || c.Proto == ProtoICMPv6 {
		port = uint16(c.ICMPType)
	}
	got, e := m.Verdict(local, remote, dir, c.Proto, port)
	wantV := want.Verdict
	if wantV == VerdictAllowed && want.L7 != nil && want.L7.Redirect {
		wantV = VerdictRedirect
	}
	if got != wantV {
		return fmt.Sprintf("%s: model %s (entry %+v), evaluator %s (matched %v)", dir, got, e, wantV, want.Matched)
	}
	var ids []uint32
	for _, mt := range want.Matched {
		ids = append(ids, mt.RuleID)
	}
	if (e.RuleID != 0) != (len(ids) > 0) || (e.RuleID != 0 && !slices.Contains(ids, e.RuleID)) {
		return fmt.Sprintf("%s: model decided by rule %d (entry %+v), evaluator matched %v", dir, e.RuleID, e, ids)
	}
	if got == VerdictRedirect {
		var gotRules, wantRules []uint32
		for _, lr := range m.L7[e.L7].Rules {
			gotRules = append(gotRules, lr.RuleID)
		}
		for _, lr := range want.L7.Rules {
			wantRules = append(wantRules, lr.RuleID)
		}
		if !slices.Equal(gotRules, wantRules) {
			return fmt.Sprintf("%s: model L7 set %d has rules %v, evaluator %v", dir, e.L7, gotRules, wantRules)
		}
	}
	return ""
}

// diffConn checks one connection (see ModelAgrees).
func diffConn(set *Set, m *Model, w genWorld, c Connection) string {
	res := set.Evaluate(w.env, c)
	if fast := NewEvaluator(set, w.env).Evaluate(c); !reflect.DeepEqual(fast, res) {
		return fmt.Sprintf("Evaluator %+v, Set.Evaluate %+v", fast, res)
	}
	fromID, fromLocal := modelRemote(m, w, c.From)
	toID, toLocal := modelRemote(m, w, c.To)
	if msg := compareEnd(m, fromID, fromLocal, toID, Egress, c, res.Egress); msg != "" {
		return msg
	}
	return compareEnd(m, toID, toLocal, fromID, Ingress, c, res.Ingress)
}

// Package policies is Membrane's policy language: it loads and validates
// policy files (HCL, see docs/policy.md and the binding specification),
// parses label selectors, compiles a policy set against identities into the
// pure model that the datapath enforces, and evaluates connections offline
// (the reference evaluator that the datapath is tested against).
//
// The front end is a staged pipeline, in the manner of HCL tools: every file
// of a set is parsed into HCL's syntax tree (by a subset parser when the file
// is plain data, as policy files are: parse_fast.go, several times faster
// than HCL's lexer and parser, checked against them; by HCL otherwise, which
// gives every syntax diagnostic); the syntax tree is walked into
// the plain types of types.go (Set, Policy, Rule, Selector, ...) checking
// each value where it stands, so that every diagnostic carries the
// file:line:col of the offending attribute, list element or selector term;
// then the checks that need a whole block or the whole set run (except
// outside its CIDRs, http with non-TCP ports, duplicate names). HCL and cty
// types stay inside this package: callers see Set and Report.
//
// Entry points:
//
//	set, rep := policies.Load("/etc/membrane/policies.d") // files or directories
//	if err := rep.Err(); err != nil { ... }               // set is nil on any error
//	set, rep = policies.Parse(policies.Source{Name: "x.hcl", Bytes: b})
//	sel, err := policies.ParseSelector("app=web,tier in (a, b)")
//	labels, err := policies.ParseLabels("app=web,tier=a")
//
// A policy set is accepted or rejected whole: Load returns no Set when any
// file has an error, so the caller keeps the last good set in force.
//
// A rule written with an empty peer or port list can never match. The loader
// keeps it (an allow block still switches default-deny on) and gives it
// NeverSelector as its only peer, a selector no label set satisfies, so that
// consumers need no special case.
//
// This package imports nothing from bpf, daemon, runtime or proxy
// (deps_test.go enforces it): it is pure data and logic, usable offline by
// `membrane policy check` and `membrane policy trace`.
package policies

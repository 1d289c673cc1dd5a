// Package policygen generates random policy sets for differential tests and
// fuzzers: the compiler's (policies, Compile + Model.Verdict against the
// reference evaluator) and the datapath's (bpf, the BPF programs against
// the evaluator). Both need the same thing: many small sets over a few
// label keys, values, prefixes and ports, so that random endpoints and
// connections hit their rules often, described by a Spec that can be
// shrunk to a minimal failing case and printed in the policy language.
//
// A Spec is plain data. Generate draws one from a *rand.Rand (the same
// seed gives the same Spec), Build turns it into a policies.Set as Load
// would (names, IDs, positions), String prints it as policy files, and
// Shrink deletes parts of it while a caller's check still fails.
//
// The tables that depend on a test's world (the prefixes rules name, the
// ICMP types, how often rules carry http blocks) are Options, so that each
// test keeps its own distribution; the label keys and values, entities,
// protocols and port ranges are the same for every test.
//
// Only tests import this package; it imports policies and the standard
// library, so the policies package's own (internal) tests cannot use it:
// its generated-set tests are in the external package policies_test.
package policygen

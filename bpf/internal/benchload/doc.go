// Package main is benchload, the loader hack/bench.d/bpf.sh uses to put
// Membrane's datapath with a large policy on a benchmark topology.
package main

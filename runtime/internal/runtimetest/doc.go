// Package runtimetest holds the test helpers the runtime sources' tests
// (runtime/docker, runtime/containerd) share: a collector that runs an
// endpoint.Source and adds its events up to the current state, one for a
// link watcher's events, and running a command. Only tests import it.
package runtimetest

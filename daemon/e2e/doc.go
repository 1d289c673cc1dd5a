// Package e2e holds membraned's end-to-end tests: a real membraned (the
// test binary re-executed as the daemon, so it can be SIGKILLed), the real
// dockerd, real busybox containers on a Docker network of the test's own
// (only that network's bridge is managed, so containers of other tests on
// this machine are never touched), real traffic between them.
package e2e

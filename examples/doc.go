// Package examples holds the tests of the deployments in this directory:
// examples/compose (a Docker Compose project) and examples/nomad (a Nomad
// job), each with its policies. The tests run the real thing: Debian's
// docker-compose, containers shaped like the ones Nomad's docker driver
// makes, and a membraned built from ./cmd/membraned that manages only the
// test's bridge, and they check each example's allow/deny matrix.
package examples

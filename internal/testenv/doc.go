// Package testenv holds the helpers that tests use to require what they need
// from the machine: root, a kernel feature, a running Docker engine, a busybox
// image. It is the one place where a test may skip, and it never skips in CI
// (CI=true): there a missing requirement is a failure, so a broken set-up can
// not hide behind skipped tests.
package testenv

// Package packaging builds Membrane's Debian and RPM packages with nfpm (as a
// library: no external packaging tool is needed) from the binaries that
// `make build` leaves in bin/.
//
// Build stages everything a package holds (the binaries, the systemd unit,
// the default configuration as a conffile, the commented example policy, man
// pages, shell completions and the documentation), then writes
// membrane_<version>_amd64.deb and membrane-<version>.x86_64.rpm.
//
// Man pages are generated, never written by hand, so they cannot drift from
// the code: membrane(1) and one page per subcommand from the CLI's own
// --help output, membraned(8) from the daemon's --help plus the fixed
// sections in this package, and membrane-policy(5) from docs/policy.md. The
// completions come from `membrane completion bash|zsh|fish`.
//
// The maintainer scripts (files/scripts) create the `membrane` group, apply
// systemd presets, start the daemon on install (through deb-systemd-invoke,
// which honours policy-rc.d), restart it on upgrade without taking the pinned
// datapath down, and run `membraned --cleanup` on removal (and, where it
// fails, remove the default pins, Membrane's tc filters and the L7 routing
// themselves).
//
// The program in ./mkpkg is what `make package` (hack/package.sh) runs.
package packaging

// Package identity maps identity-relevant label sets to numeric security
// identities and keeps the mapping in the daemon's state directory, so a
// container keeps its identity across daemon restarts (conntrack entries,
// pinned policy maps and peers' ipcaches all refer to the number).
//
// Numbers start at policies.FirstAllocated (256) and grow; a number is only
// reused after the identity was unused for the grace period and every
// higher number has been handed out, which keeps a stale number from
// meaning another workload soon after. The reserved identities of the
// policy language (0 unknown, 1 host, 2 world, 3 unmanaged, 5 init) are
// never allocated and are listed by Reserved.
//
// The store file is rewritten crash-safely: write a temporary file in the
// same directory, fsync it, rename it over the old one, fsync the
// directory. A crash leaves either the old or the new file, never a torn one.
//
// A Store is safe for concurrent use; the reconciler is its only writer in
// the daemon.
package identity

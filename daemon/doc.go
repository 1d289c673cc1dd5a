// Package daemon is membraned: it owns the lifecycle and the reconcile loop,
// the only writer of kernel state.
//
// Run opens the identity store and the datapath (adopting the pins a
// previous membraned left, so enforcement never lapses; when the maps had
// to be replaced, the veths keep the previous programs and maps until the
// first full reconcile has filled the new ones), then runs its
// subsystems under one errgroup: the runtime sources (Docker, containerd),
// the link watcher, the policy-directory watcher, the host-address watcher,
// the flow-event reader, the local API and the metrics endpoint. They only
// send requests; the reconciler goroutine applies them to the datapath in
// order:
//
//   - a veth appearing on a managed bridge gets the programs at once
//     (fail-closed: until its endpoint is known its traffic is identity
//     init, dropped by default);
//   - an endpoint event allocates the identity of its label set, updates
//     the ipcache, recompiles the policy model when the identity set
//     changed, and only then writes the endpoint map entry, so the first
//     packet judged under the endpoint's identity already meets its policy;
//   - a policy change (fsnotify, debounced) loads the directory as one set
//     (the first load waits until the watch is in place, so no file
//     written during start-up goes unseen):
//     an invalid set is rejected whole, logged with positions, shown in
//     status and metrics, and the last good set stays enforced. A valid
//     set that does not fit the maps (maps.policy_entries, maps.policy,
//     maps.ipcache) is rejected the same way, at start too, where it is
//     checked at the first full reconcile. The last good set's sources,
//     the bytes that were parsed and accepted, are saved in the state
//     directory once the set is written, so a daemon that starts while
//     the directory is invalid or too big enforces them too (with no
//     saved set, nothing is loaded and the pinned policy maps stay as the
//     previous daemon left them; with no pins either, nothing is enforced
//     until a valid set arrives: the error is in status and metrics);
//   - when a new identity appears, its own policy and every change that
//     adds a deny or removes an allow are written first, then its endpoint
//     entry; peers that only gain allow entries for it follow in one batch
//     when the event queue is quiet (meanwhile they are stricter, never
//     looser, than the target);
//   - host address changes go to the ipcache as identity host (1);
//   - a periodic full resync rewrites everything from scratch (idempotent)
//     and prunes what is no longer wanted; conntrack GC runs with it.
//
// The L7 proxy (l7.go) starts before the reconcile loop: the policy
// routing (proxy.DefaultRouting) and bpf.PrepareProxyPath are installed, and
// the engine of the config's l7 block (built-in: a transparent listener on
// l7.port, default 15001; envoy: a managed Envoy fed over xDS) listens
// before any policy with a proxy port is written. Every policy entry with
// an L7 ruleset gets the engine's port; every new model or ipcache goes to
// the engine as a proxy.ModelResolver, so the next request on every
// connection, kept-alive ones too, meets the current rules. Each managed
// veth's bridge gets the bridge program and is written into the veth's
// endpoint entry (the redirect target). Each request's verdict becomes an
// "l7" flow for `membrane observe --type l7`; the engine's collectors are
// in the metrics registry. An engine that cannot start is a status
// problem: redirected connections then find no listener and are dropped
// (fail-closed), everything else runs.
//
// READY=1 goes to systemd after the first full reconcile, which waits for
// the runtime sources' first list and the link watcher's first scan, and
// then until every endpoint and veth of those lists has been applied by
// the reconcile loop (their events are queued behind the lists): at
// READY=1 every container present at start is enforced, or held back as
// init (dropped) when its identity's policy cannot be written. The first
// full reconcile prunes what it does not know, so it must not run on a
// half-applied list either. When that has not happened within 20 s
// (dockerd not answering, say), READY=1 goes anyway, with a problem in
// status that says what is still awaited (the sources that have not
// listed, or how many listed endpoints and veths are not applied yet;
// kept up to date until the first full reconcile), and the pinned
// datapath is left as it is until it has.
// An endpoint judged as init while the daemon knows it (its identity could
// not be allocated, retried at every full resync; its policy could not be
// written) has its addresses in the ipcache as init, so that its peers
// judge it as init too, never as world.
// Cancellation of Run's context is the normal way to stop: pins and
// attachments stay (SIGTERM never drops protection); Cleanup removes them
// (package removal): CleanupDatapath (pins, container and bridge programs)
// and CleanupL7 (routing, nftables table, Envoy run directory).
package daemon

// Package endpoint is the runtime-neutral model of what Membrane enforces on:
// an endpoint is one network namespace, with the containers in it, the
// host-side veth of each of its interfaces, its addresses and its labels.
//
// The runtime sources (runtime/docker, runtime/containerd) each keep a Table
// of the endpoints they found and report every change as an Event (Added,
// Updated, Removed) carrying the whole endpoint, so the consumer never has to
// merge partial updates. A Table diffs a freshly computed endpoint against
// the last one it reported, which is what makes a full resync after a
// reconnect emit nothing for endpoints that did not change, an Updated for
// those that did, and a Removed for those that disappeared while the runtime
// was out of reach.
//
// Both sources follow their runtime the same way, so that protocol is here
// once: a Follower runs the reconnect loop with backoff and, per connection,
// subscribes to the runtime's events before it resyncs, refreshes each
// container an event names in order through a Dispatcher, and pushes every
// container through the same queue on each recheck tick; a source supplies
// only the runtime-specific parts (subscribe, an event's container key,
// resync, refresh, the recheck list). Progress is what its users see of it
// (Synced, Reconnects).
//
// Labels: an endpoint's Labels are the raw labels of its netns owner, plus
// the labels that every container joined to that netns shares with the same
// value (design.md, data flow 1), plus the derived labels of the policy
// language ("Labels an endpoint carries"): compose.project, compose.service,
// nomad.namespace, nomad.job, nomad.group, nomad.task, containerd.namespace
// and container.name. DeriveLabels and MergeLabels compute them; IdentityLabels
// applies the identity-relevant filter (the default volatile excludes plus the
// config's include/exclude regular expressions) and is what the daemon feeds
// to the identity allocator and selectors.
package endpoint

// How the daemon wires the runtime packages (all of them run until the root
// context is cancelled; Run returns nil then):
//
//	dsrc := docker.New(docker.Config{Logger: log})
//	csrc := containerd.New(containerd.Config{SkipMoby: true, Namespaces: cfg.Namespaces, Logger: log})
//	lw, err := linkwatch.New(linkwatch.Config{Bridges: cfg.Bridges, Resolvers: []linkwatch.Resolver{dsrc, csrc}, Logger: log})
//	g.Go(func() error { return dsrc.Run(ctx) })
//	g.Go(func() error { return csrc.Run(ctx) })
//	g.Go(func() error { return lw.Run(ctx) })
//	<-dsrc.Synced(); <-csrc.Synced()  // then the first full reconcile, then READY=1
//	for { select { case ev := <-dsrc.Events(): ...; case ev := <-lw.Events(): ... } }
//
// A linkwatch Added event (host ifindex, bridge) arrives first: attach the
// programs with identity init (fail-closed). The runtime's endpoint event
// follows with the same host ifindex in Endpoint.Interfaces[i].HostIfindex,
// the addresses and the labels: compute IdentityLabels(ep.Labels, filter),
// allocate the identity and update the endpoint map and ipcache. Removed
// events carry the endpoint as last reported, so its ifindexes and addresses
// can be withdrawn without a lookup. ModeHost endpoints have no interface:
// policy treats them as the entity host.

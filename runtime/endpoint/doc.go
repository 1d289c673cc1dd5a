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

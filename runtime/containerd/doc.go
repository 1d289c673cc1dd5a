// Package containerd discovers containerd containers (those not made by
// Docker, which runtime/docker covers) and reports them as endpoints
// (runtime/endpoint). It implements endpoint.Source with the containerd v2
// Go client, which talks to Debian's containerd 1.6 as well as to 2.x.
//
// It lists every container of the configured namespaces (all namespaces by
// default; "moby", Docker's own, is skipped when Config.SkipMoby is set,
// which the daemon does whenever it also watches Docker) and subscribes to
// the event service first so nothing is missed between the two: /tasks/start,
// /tasks/exit, /tasks/delete, /tasks/paused, /tasks/resumed,
// /containers/create, /containers/update, /containers/delete. containerd's
// Subscribe returns before the server has registered the subscriber, so an
// event published in between would reach no one: the source publishes a
// probe event (topic /membrane/subscribed, namespace "membrane", a token
// of its own) until the probe comes back through its stream, and lists only
// then (a containerd that refuses the probe is followed unconfirmed, with a
// warning). As in
// runtime/docker, every event only triggers a re-read of that container,
// per container in order (endpoint.Dispatcher), and the result is diffed
// against what was reported; a broken event stream means reconnect with
// backoff and a full resync.
//
// Network namespace: the OCI spec's network namespace entry. With a path
// (CNI-style: the netns was made beforehand, e.g. `ip netns add`, nerdctl,
// Nomad's containerd driver) that path is used, falling back to
// /proc/PID/ns/net of the task when the daemon cannot see the path (its own
// mount namespace); with no path the task made its own netns and
// /proc/PID/ns/net is used; with no network namespace entry at all the
// container shares the host's, which is reported like Docker's host mode
// (endpoint.ModeHost, no interfaces).
//
// Endpoints: containers whose namespaces have the same inode form one
// endpoint (a pod-like group); its owner, the first of Containers, is the
// one created first. Endpoint ids are "NAMESPACE/CONTAINER-ID". Host-mode
// containers are one endpoint each. The container name (for
// container.name) is the nerdctl/name label when present, else the id; the
// containerd.namespace label is always set.
//
// A network namespace that exists but cannot be read keeps the endpoint's
// network state last read, with Endpoint.Stale saying why, and the
// container is read again until it can be (as in runtime/docker).
//
// A created container whose spec names a netns path is remembered before its
// task starts, so the link watcher can name it when a CNI plugin puts a veth
// in that namespace (ContainerByNetns).
package containerd

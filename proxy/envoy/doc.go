// Package envoy is Membrane's managed-Envoy L7 engine.
//
// membraned serves xDS to Envoy (ADS, state of the world, over a unix
// socket) with envoyproxy/go-control-plane, writes Envoy's bootstrap, and
// supervises the `envoy` process: start, readiness through the admin
// socket's /ready (a process that was ready and stops answering is killed),
// restart with exponential backoff. Or it leaves the process to the systemd
// unit membrane-envoy.service (UnitFile; Config.Unit). Engine.Problems
// (proxy.ProblemReporter, shown by `membrane status`) says what keeps Envoy
// from serving now: a process that exits or does not answer /ready, and
// resources Envoy rejected (an xDS NACK; Envoy keeps the ones it accepted
// last).
//
// Translation (Translate) from a proxy.Resolver that can enumerate itself
// (proxy.ModelResolver) into Envoy resources:
//   - one listener "membrane_proxy" on the proxy port (IPv4 plus an IPv6
//     additional address), transparent, with the original_dst listener
//     filter, so a connection the datapath assigned to it is handled under
//     its original destination;
//   - per (source identity, destination identity, port) that carries L7
//     checks, a filter chain matched by source prefixes, destination
//     prefixes and destination port (the ipcache, turned around); world is
//     the chain without source (or destination) prefixes;
//   - in each chain an HTTP connection manager (HTTP/1.1 and h2c with prior
//     knowledge, WebSocket upgrades, path normalization) whose filters are the
//     same everywhere (an egress and an ingress RBAC filter without rules,
//     then the router), local reply mappers that give Envoy's own 403s the
//     built-in engine's bodies (proxy.DenyText for an RBAC denial, told
//     apart by direction with Envoy's CEL access log filter on the response
//     code details; CONNECT and other upgrades; its codecs' 400s the
//     built-in engine's "400 Bad Request: " and the reason), every local
//     reply with the built-in engine's X-Content-Type-Options: nosniff and
//     text/plain; charset=utf-8, and a JSON access log that becomes the
//     engine's events (the chain's identities in each line; the
//     no-policy chain, every connection's default, has none to write,
//     and the engine names its requests' from the resolver by address);
//   - per chain a route configuration, served over RDS, holding the rules:
//     per-route RBAC overrides (a DENY of whatever no rule allows, under a
//     policy named for the direction, so a denial's response code details
//     say whose rules refused; method, path, :authority and header
//     matchers, and for a host pattern the X-Forwarded-Host and Forwarded
//     matchers of forwarded.go), routes named "rule-<id>" so the access log says which rule
//     allowed a request, and the policy names, all and per direction, as
//     route metadata. A rule change that keeps the topology changes only routes,
//     which Envoy applies to the next request on existing connections (a
//     listener change would drain them); resources are packed
//     deterministically so an unchanged listener stays byte-identical;
//   - per source identity an ORIGINAL_DST cluster whose upstream sockets
//     carry SO_MARK = proxy.FromProxyMark(identity), so the destination's
//     program judges the true source, with a connection pool per client
//     connection (an upstream connection never carries another client's
//     requests, as with the built-in engine);
//   - a default filter chain that answers 403 (no L7 policy for this
//     connection), so a connection Envoy has no rules for yet is never
//     forwarded unjudged.
//
// The connection managers, the listener and the clusters carry the
// built-in engine's limits wherever Envoy has the same knob (a request head
// of 64 KiB within 30 s of its first byte, idle connections closed after 2
// minutes, streams that stop moving after 5, HTTP/2 clients held to 250
// streams, HTTP/2 windows of 64 KiB a stream and 128 KiB a connection to
// clients and to upstreams alike, 32 KiB read or written ahead on a
// connection, upstream response heads of 1 MiB, idle upstream connections closed after
// 90 s; limits_test.go), and the bootstrap bounds
// the client connections at l7.max_connections. Envoy has nothing for
// l7.max_connections_per_source (docs/operations.md, decision 53).
//
// A resolver that cannot enumerate (proxy.StaticResolver, in tests) becomes a
// single catch-all chain with its one decision. Every resource and every
// typed config inside it passes go-control-plane's ValidateAll before it is
// served; a translation error keeps the last good snapshot in force.
package envoy

// Package api is membraned's local API: HTTP+JSON over a unix socket, and
// the client that the membrane CLI uses.
//
// Routes (all under /v1):
//
//	GET  /v1/status                  Status
//	GET  /v1/endpoints               []Endpoint
//	GET  /v1/endpoints/{id}          Endpoint (id, container name or container id)
//	GET  /v1/identities              []Identity
//	GET  /v1/policy                  Policy
//	POST /v1/policy/trace            TraceRequest -> TraceResult (read-only)
//	GET  /v1/observe?follow=1&verdict=dropped&container=NAME
//	                                 newline-delimited Flow records
//	                                 (follow: 1, true, 0, false or absent)
//	POST /v1/policy/reload           re-read the policy directory   (writer)
//	POST /v1/resync                  full resync of the datapath    (writer)
//
// Permissions come from the peer's credentials (SO_PEERCRED for uid and
// gid, SO_PEERGROUPS for the supplementary groups): every request that
// changes something needs uid 0 or membership of the API group (default
// "membrane"); reads are open to whoever can connect, which the socket's
// mode (0660 root:membrane when the group exists, else 0600 root) decides.
// Requests carrying Origin or Referer are refused: a browser tricked into
// talking to a local proxy must never reach the API. So are requests whose
// Host is not the client's "membraned" or "localhost": a page that rebinds
// its name to such a proxy sends neither header but its own Host.
//
// Requests that change something take no body fields. Body keys and query
// parameters are matched exactly (not case-insensitively, as encoding/json
// would) and may appear once; anything else is a 400 with its position.
// Every error answer is JSON ({"error": MESSAGE}), an unknown path's 404
// and a wrong method's 405 (with Allow) too. A request must
// arrive within 10s and each write to the client go through within 30s;
// one uid may hold 32 observe streams, and a follower that falls behind is
// dropped and told so in the Membrane-Stream-Error trailer.
//
// Listen detects a stale socket left by a crashed daemon (connection
// refused: removed and replaced) and refuses to start when another
// membraned answers on it.
package api

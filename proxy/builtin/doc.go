// Package builtin is Membrane's built-in L7 engine: a transparent HTTP proxy
// in Go, the default where no `envoy` binary is installed.
//
// It serves HTTP/1.1 (keep-alive, pipelining, streaming and chunked bodies of
// any size, Expect: 100-continue, WebSocket upgrades judged at the upgrade
// request) and HTTP/2 cleartext with prior knowledge (so gRPC works; every
// stream is judged) on the listeners it is given, which are normally the
// IP_TRANSPARENT listeners of proxy.ListenTransparent. For each connection it
// asks the current proxy.Resolver which checks apply; every request is judged
// against them (anchored method/path/host regexps, headers exact or present),
// a miss is answered 403 with a short text body naming the policy, and an
// allowed request goes upstream to the original destination on a socket
// whose SO_MARK carries the source identity and the from-proxy flag.
// An HTTP/1.x client connection is served by one goroutine with the
// engine's own parser (h1.go, h1parse.go, h1body.go): no net/http server
// on that path; its sockets are read and written with raw system calls
// through the runtime's poller (rawio.go), which keeps a write that runs
// the peer's receive path inline from costing a thread hand-off. It owns one
// upstream connection to the original destination, dialed at the first
// allowed request and again when the upstream closed it (a body-less
// request on a kept-alive upstream connection the server just dropped is
// retried once); request and response bodies are relayed by their framing
// (Content-Length, chunked, until close) without buffering whole bodies
// (a request's chunked trailer section is dropped: the rules never saw it);
// pipelined requests are answered in order, and responses are flushed when
// the client has nothing more buffered. A client that half-closes after
// its request still gets the response. A WebSocket upgrade, judged at the
// request, becomes a byte tunnel once the upstream agrees (101 with
// Upgrade: websocket and Connection: upgrade; a bare 101 gets 502), until
// it idles for the stream idle timeout; an upgrade to h2c is forwarded as a
// plain request, since its streams could not be judged, and CONNECT and
// other upgrades are refused. A connection that opens with the HTTP/2
// preface is handed to net/http's HTTP/2 server, whose streams go through
// httputil.ReverseProxy over upstream transports of the client
// connection's own, whose connections close with it (h2upstream.go); the
// engine follows the frames it reads (h2head.go) to hold a header block,
// and any frame but DATA, to the header timeout of an HTTP/1 request head.
// Flow-control windows bound what waits in the engine of bodies the other
// side does not take (h2Windows): 64 KiB a stream each way, 128 KiB of a
// client connection's request bodies, and 128 KiB of an upstream
// connection's responses (with HTTP/2's initial 64 KiB on top), so that
// a stream, which takes a slot of the connection limits, holds about
// twice what an HTTP/1.1 connection does (decision 87).
// Either way an upstream connection serves one client connection only. Update
// swaps the resolver; a connection re-resolves at its next request, so rule
// changes apply to kept-alive connections. A request that does not parse
// gets 400 (Content-Length with Transfer-Encoding, differing
// Content-Lengths, a malformed request line, field or chunk, a target
// byte that is not visible ASCII, over HTTP/2 too), oversized
// headers 431, another Transfer-Encoding than chunked 501, an Expect other
// than 100-continue 417; then the connection closes.
//
// The engine holds at most Config.MaxConnections client connections, and
// MaxConnectionsPerSource from one source address; one over either is reset
// when accepted (limit.go). Between requests an idle connection holds no
// buffer: it waits for the client's next bytes with a one-byte peek, its
// read and write buffers and its upstream connection's go back to pools,
// and what a large request head made its own buffers grow to is dropped.
//
// Paths are judged after removing dot segments and repeated slashes, and a
// request whose path changed that way is forwarded with the normalized path,
// so the rule and the server see the same thing. Hosts are judged without
// port, lower-cased; a rule on the host judges the hosts X-Forwarded-Host
// and Forwarded name too (policies.HTTPForwardedHostsMatch), collected
// only for connections whose rules look at the host. Where a rule looks
// at the method or the path, a request carrying a field servers take for
// it gets 400: X-HTTP-Method-Override and its kin
// (policies.HTTPMethodOverride), X-Original-URL and X-Rewrite-URL
// (policies.HTTPPathOverride), in any spelling of their separators; over
// HTTP/1 in one pass over the field names, made only for connections
// whose rules look at either.
package builtin

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
// An HTTP/1.x client connection gets its own upstream connection (request
// and response handled on the handler's goroutine, pipelined requests in
// order; a kept-alive upstream connection the server dropped is replaced and
// a body-less request retried once; a client that half-closes after its
// request still gets the response, since net/http's cancellation of the
// request context at the client's EOF does not stop the upstream dial);
// HTTP/2 streams and upgrades go through
// httputil.ReverseProxy with transports pooled per mark. Either way one
// source's upstream connection is never reused for another source. Update swaps the resolver; a connection
// re-resolves at its next request, so rule changes apply to kept-alive
// connections. Bad requests get 400 and oversized headers 431 from net/http
// without reaching the handler.
//
// Paths are judged after removing dot segments and repeated slashes, and a
// request whose path changed that way is forwarded with the normalized path,
// so the rule and the server see the same thing. Hosts are judged without
// port, lower-cased.
package builtin

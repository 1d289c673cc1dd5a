// Package conformance is the L7 conformance suite: one set of behaviours
// that every engine (proxy/builtin, proxy/envoy) must show, run from each
// engine's tests through Run with a factory that starts the engine in front
// of the suite's upstream.
//
// The suite starts one upstream server (HTTP/1.1 and h2c with prior
// knowledge, a gRPC health service, a WebSocket echo, upload and download
// endpoints), asks the factory for an engine that forwards every connection
// to it (a non-transparent test mode: the factory supplies the original
// destination), loads a fixed policy (Policy) with Engine.Update, and checks
// over real loopback connections: allowed and denied methods, paths, hosts
// and headers; keep-alive connections mixing allowed and denied requests;
// pipelining; rule changes on a kept-alive connection; large uploads
// (chunked, Expect: 100-continue; their trailers never reach the upstream)
// and downloads; WebSocket; h2c streams; a gRPC call allowed by path and
// one denied; bad and oversized requests; and,
// when the engine reports events, the verdict records; and the Prometheus
// request counters by verdict.
package conformance

// Command l7bench is the helper of hack/bench.d/proxy.sh: it runs the
// benchmark's upstream, the built-in engine in front of it (in its own
// process, so its CPU time can be read from /proc), and a fixed-rate load
// generator that reports latency percentiles, for one URL or several
// interleaved. The floor the engine is compared with is hack/bench.d/relay.c.
// It is not installed.
//
//	l7bench upstream -listen 127.0.0.1:18080
//	l7bench proxy -listen 127.0.0.1:18081 -upstream 127.0.0.1:18080
//	l7bench rate -url http://127.0.0.1:18081/public/x,http://127.0.0.1:18080/public/x -rps 1000 -duration 10s -conns 8
package main

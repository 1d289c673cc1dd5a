// Package proxy is Membrane's L7 layer: the pieces every L7 engine shares.
//
// The datapath sends a connection that an L7 policy entry admits to the
// proxy's transparent listener (design.md, "L7"). An engine accepts it, learns
// the original destination from the accepted socket's local address, asks a
// Resolver which HTTP rules apply to (source, destination), judges every
// request, answers 403 on a miss, and forwards allowed requests upstream on a
// socket whose SO_MARK carries the source identity and the from-proxy flag,
// so the destination's program judges the true source and never redirects the
// connection again.
//
// This package holds:
//   - Engine, Resolver, Decision, Check, Event: the contract between the
//     daemon and an engine (proxy/builtin, proxy/envoy); proxy/engines picks
//     one from the config's `l7 { engine = "auto|builtin|envoy" }`.
//   - ModelResolver: a Resolver built from a compiled policies.Model and the
//     ipcache (prefix -> identity); what the daemon hands to Update.
//   - Match: the reference HTTP rule matcher (anchored regexps, headers
//     exact or present).
//   - The socket plumbing: ListenTransparent (IP_TRANSPARENT listeners),
//     OriginalDst, DialMarked (SO_MARK upstream), InNetNS, and Routing
//     (Install/Remove: the fwmark rule and its `local default dev lo` table,
//     installed idempotently through netlink, removed by --cleanup).
//   - The skb->mark layout shared with the datapath (mark.go).
//   - Metrics: the Prometheus collectors both engines report through.
//
// # Wiring (membraned)
//
//	name, envoyPath, err := proxy.ChooseEngine(cfg.L7.Engine, nil) // auto|builtin|envoy
//	if err := proxy.DefaultRouting.Install(nil); err != nil { ... }  // idempotent
//	var eng proxy.Engine
//	if name == proxy.EngineEnvoy {
//		eng, err = envoy.New(envoy.Config{Port: port, EnvoyPath: envoyPath, Logger: log, Events: sink})
//		// eng.(*envoy.Engine).WaitReady(ctx) before the datapath redirects to it
//	} else {
//		ls, err := proxy.ListenTransparent(ctx, port)
//		eng, err = builtin.New(builtin.Config{Listeners: ls, Logger: log, Events: sink})
//	}
//	registry.MustRegister(eng.Collectors()...)
//	// after every compile or ipcache change:
//	eng.Update(proxy.NewModelResolver(model, ipcache, proxy.RuleNames(set)))
//	// the datapath's proxy port for every L7 ruleset:
//	proxyPort := func(l7 uint32) uint16 { return eng.Port() }
//	// --cleanup:
//	proxy.DefaultRouting.Remove(nil)
package proxy

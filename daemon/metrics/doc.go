// Package metrics holds membraned's Prometheus metrics in a registry of its
// own (no global registry) and serves them over HTTP. The reconciler updates
// gauges and histograms as it works; datapath counters (verdicts by
// direction and reason) and map fill levels are read at scrape time through
// a collector callback, so the numbers are always the kernel's.
package metrics

package metrics

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// VerdictCount is one datapath counter, read at scrape time.
type VerdictCount struct {
	Direction string // ingress | egress
	Reason    string
	Verdict   string // allowed | dropped | audit | redirect
	Packets   uint64
	Bytes     uint64
}

// MapFill is one BPF map's fill level.
type MapFill struct {
	Map      string
	Entries  int
	Capacity int
}

// Sampler reads the datapath at scrape time. Any function may be nil.
type Sampler struct {
	Verdicts func() []VerdictCount
	Maps     func() []MapFill
	// EventsLost is the count of flow records the ring buffer had no
	// room for; false when it cannot be read.
	EventsLost func() (uint64, bool)
}

// Metrics is the daemon's metric set.
type Metrics struct {
	Registry *prometheus.Registry

	Endpoints         prometheus.Gauge
	Identities        prometheus.Gauge
	Policies          prometheus.Gauge
	PolicyRevision    prometheus.Gauge
	PolicyLoadErrors  prometheus.Counter
	PolicyLoadFailing prometheus.Gauge
	ReconcileDuration *prometheus.HistogramVec
	EventLag          *prometheus.HistogramVec
	DatapathErrors    *prometheus.CounterVec
	RuntimeConnected  *prometheus.GaugeVec
	RuntimeReconnects *prometheus.CounterVec
}

// New creates the metrics and registers them, plus the Go and process
// collectors, in a fresh registry.
func New(s Sampler) *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		Endpoints: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "membrane_endpoints", Help: "Managed endpoints (network namespaces).",
		}),
		Identities: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "membrane_identities", Help: "Allocated security identities (excluding reserved ones).",
		}),
		Policies: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "membrane_policies", Help: "Policies in the enforced set.",
		}),
		PolicyRevision: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "membrane_policy_revision", Help: "Revision of the enforced policy set.",
		}),
		PolicyLoadErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "membrane_policy_load_errors_total", Help: "Policy sets rejected, as invalid or too big for the maps (the last good set stayed enforced).",
		}),
		PolicyLoadFailing: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "membrane_policy_load_failing", Help: "1 while the last policy set read was rejected (invalid, or too big for the maps).",
		}),
		ReconcileDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "membrane_reconcile_duration_seconds", Help: "Time to apply one change (or a full resync) to the datapath.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}, []string{"kind"}),
		EventLag: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "membrane_event_lag_seconds", Help: "Delay from a runtime, link or policy event to its enforcement.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}, []string{"source"}),
		DatapathErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "membrane_datapath_errors_total", Help: "Failed writes to the datapath, the proxy or the state directory (map full, attach failure), by op.",
		}, []string{"op"}),
		RuntimeConnected: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "membrane_runtime_connected", Help: "1 while the runtime source follows its runtime's events, 0 while the runtime is lost (the endpoints stay enforced as last known).",
		}, []string{"runtime"}),
		RuntimeReconnects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "membrane_runtime_reconnects_total", Help: "Times a lost runtime was reconnected to and resynced in full.",
		}, []string{"runtime"}),
	}
	m.Registry.MustRegister(m.Endpoints, m.Identities, m.Policies, m.PolicyRevision, m.PolicyLoadErrors,
		m.PolicyLoadFailing, m.ReconcileDuration, m.EventLag, m.DatapathErrors, m.RuntimeConnected, m.RuntimeReconnects,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		&sampled{s: s})
	return m
}

var (
	verdictPackets = prometheus.NewDesc("membrane_verdicts_total", "Packets judged by the datapath, by direction, verdict and reason.", []string{"direction", "verdict", "reason"}, nil)
	verdictBytes   = prometheus.NewDesc("membrane_verdict_bytes_total", "Bytes judged by the datapath, by direction, verdict and reason.", []string{"direction", "verdict", "reason"}, nil)
	mapEntries     = prometheus.NewDesc("membrane_map_entries", "Entries in a BPF map.", []string{"map"}, nil)
	mapCapacity    = prometheus.NewDesc("membrane_map_capacity", "Capacity of a BPF map (maps {} in the config).", []string{"map"}, nil)
	// Read from the datapath's counter at each scrape, as the verdicts
	// are: a count the event reader updated as records came would lag
	// behind the losses of a burst until the next record came.
	eventsLost = prometheus.NewDesc("membrane_flow_events_lost_total", "Flow events lost to a full ring buffer.", nil, nil)
	mapFill    = prometheus.NewDesc("membrane_map_fill_ratio", "Entries / capacity of a BPF map; 1 means full (writes fail).", []string{"map"}, nil)
)

// sampled reads the datapath at scrape time.
type sampled struct{ s Sampler }

func (c *sampled) Describe(ch chan<- *prometheus.Desc) {
	ch <- verdictPackets
	ch <- verdictBytes
	ch <- mapEntries
	ch <- mapCapacity
	ch <- mapFill
	ch <- eventsLost
}

func (c *sampled) Collect(ch chan<- prometheus.Metric) {
	if c.s.Verdicts != nil {
		for _, v := range c.s.Verdicts() {
			ch <- prometheus.MustNewConstMetric(verdictPackets, prometheus.CounterValue, float64(v.Packets), v.Direction, v.Verdict, v.Reason)
			ch <- prometheus.MustNewConstMetric(verdictBytes, prometheus.CounterValue, float64(v.Bytes), v.Direction, v.Verdict, v.Reason)
		}
	}
	if c.s.EventsLost != nil {
		if n, ok := c.s.EventsLost(); ok {
			ch <- prometheus.MustNewConstMetric(eventsLost, prometheus.CounterValue, float64(n))
		}
	}
	if c.s.Maps != nil {
		for _, m := range c.s.Maps() {
			ch <- prometheus.MustNewConstMetric(mapEntries, prometheus.GaugeValue, float64(m.Entries), m.Map)
			ch <- prometheus.MustNewConstMetric(mapCapacity, prometheus.GaugeValue, float64(m.Capacity), m.Map)
			if m.Capacity > 0 {
				ch <- prometheus.MustNewConstMetric(mapFill, prometheus.GaugeValue, float64(m.Entries)/float64(m.Capacity), m.Map)
			}
		}
	}
}

// Serve exposes /metrics on addr until ctx ends. An empty addr disables
// metrics (Serve waits for ctx and returns nil).
func (m *Metrics) Serve(ctx context.Context, addr string, log *slog.Logger) error {
	if addr == "" {
		<-ctx.Done()
		return nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	return m.ServeListener(ctx, ln, log)
}

// ServeListener is Serve on an open listener.
func (m *Metrics) ServeListener(ctx context.Context, ln net.Listener, log *slog.Logger) error {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return err
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
		return nil
	}
}

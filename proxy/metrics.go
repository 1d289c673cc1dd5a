package proxy

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the collectors both engines report through; the names are
// the same whichever engine runs, labelled by engine.
type Metrics struct {
	Requests          *prometheus.CounterVec
	Duration          *prometheus.HistogramVec
	ConnectionsActive prometheus.Gauge
	Connections       prometheus.Counter
	// ConnectionsRefused counts client connections reset at once because
	// the engine was at a connection limit, by limit (reason).
	ConnectionsRefused *prometheus.CounterVec
	engine             string

	// Children of the vectors for the known verdicts, looked up once.
	byVerdict map[string]verdictMetrics
}

type verdictMetrics struct {
	requests prometheus.Counter
	duration prometheus.Observer
}

// NewMetrics makes the collectors of one engine.
func NewMetrics(engine string) *Metrics {
	cl := prometheus.Labels{"engine": engine}
	m := &Metrics{
		engine: engine,
		Requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "membrane_proxy_requests_total", ConstLabels: cl,
			Help: "HTTP requests judged by the L7 proxy, by verdict (forwarded, denied, error).",
		}, []string{"verdict"}),
		Duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "membrane_proxy_request_duration_seconds", ConstLabels: cl,
			Help:    "Time from a request's headers to the end of its response, by verdict.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 10},
		}, []string{"verdict"}),
		ConnectionsActive: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "membrane_proxy_connections_active", ConstLabels: cl,
			Help: "Client connections the L7 proxy holds open.",
		}),
		Connections: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "membrane_proxy_connections_total", ConstLabels: cl,
			Help: "Client connections the L7 proxy accepted.",
		}),
		ConnectionsRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "membrane_proxy_connections_refused_total", ConstLabels: cl,
			Help: "Client connections the L7 proxy reset at once, by reason: at a limit (max_connections, max_connections_per_source; HTTP/2 requests get 503 instead), or made to its own port directly (direct).",
		}, []string{"reason"}),
		byVerdict: map[string]verdictMetrics{},
	}
	for _, v := range []string{VerdictForwarded, VerdictDenied, VerdictError} {
		m.byVerdict[v] = verdictMetrics{m.Requests.WithLabelValues(v), m.Duration.WithLabelValues(v)}
	}
	return m
}

// Observe counts one event.
func (m *Metrics) Observe(e *Event) {
	if v, ok := m.byVerdict[e.Verdict]; ok {
		v.requests.Inc()
		v.duration.Observe(e.Duration.Seconds())
		return
	}
	m.Requests.WithLabelValues(e.Verdict).Inc()
	m.Duration.WithLabelValues(e.Verdict).Observe(e.Duration.Seconds())
}

// Collectors lists the collectors, for Engine.Collectors.
func (m *Metrics) Collectors() []prometheus.Collector {
	return []prometheus.Collector{m.Requests, m.Duration, m.ConnectionsActive, m.Connections, m.ConnectionsRefused}
}

package metrics

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
)

func TestScrapeShowsDaemonAndDatapathFigures(t *testing.T) {
	m := New(Sampler{
		Verdicts: func() []VerdictCount {
			return []VerdictCount{{Direction: "egress", Verdict: "dropped", Reason: "policy-deny", Packets: 3, Bytes: 180}}
		},
		Maps: func() []MapFill { return []MapFill{{Map: "ipcache", Entries: 5, Capacity: 10}} },
	})
	m.Endpoints.Set(4)
	m.PolicyRevision.Set(9)
	m.PolicyLoadErrors.Inc()
	m.ReconcileDuration.WithLabelValues("endpoint").Observe(0.002)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.ServeListener(ctx, ln, slog.New(slog.DiscardHandler)) }()
	defer func() { cancel(); <-done }()

	resp, err := http.Get("http://" + ln.Addr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		"membrane_endpoints 4",
		"membrane_policy_revision 9",
		"membrane_policy_load_errors_total 1",
		`membrane_verdicts_total{direction="egress",reason="policy-deny",verdict="dropped"} 3`,
		`membrane_map_fill_ratio{map="ipcache"} 0.5`,
		`membrane_reconcile_duration_seconds_count{kind="endpoint"} 1`,
		"process_resident_memory_bytes",
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("scrape lacks %q", want)
		}
	}
}

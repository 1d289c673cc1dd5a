package bpf

import (
	"os"
	"strings"
	"testing"

	"github.com/membrane-fw/membrane/internal/testenv"
)

// TestProxyPathRestoresEarlyDemux: PrepareProxyPath turns tcp_early_demux
// off and RemoveProxyPath puts back the value the host had, however often
// PrepareProxyPath ran in between (a restarted daemon must not record its
// own 0), in a namespace of the test's own.
func TestProxyPathRestoresEarlyDemux(t *testing.T) {
	testenv.RequireRoot(t)
	ns := testenv.NewNetNS(t, "mpp-")
	demux := func() string {
		b, err := os.ReadFile(earlyDemux)
		must(t, err)
		return strings.TrimSpace(string(b))
	}
	set := func(v string) { must(t, os.WriteFile(earlyDemux, []byte(v+"\n"), 0o644)) }
	for _, host := range []string{"1", "0"} {
		must(t, ns.Do(func() error {
			set(host)
			must(t, PrepareProxyPath())
			if got := demux(); got != "0" {
				t.Errorf("host value %s: tcp_early_demux %s after PrepareProxyPath, want 0", host, got)
			}
			must(t, PrepareProxyPath()) // a restarted daemon
			must(t, RemoveProxyPath())
			if got := demux(); got != host {
				t.Errorf("tcp_early_demux %s after RemoveProxyPath, want the host's %s", got, host)
			}
			must(t, RemoveProxyPath()) // nothing left: no error, no change
			set("1")
			must(t, RemoveProxyPath())
			if got := demux(); got != "1" {
				t.Errorf("RemoveProxyPath without a table changed tcp_early_demux to %s", got)
			}
			return nil
		}))
	}
}

package daemon

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/membrane-fw/membrane/daemon/api"
	"github.com/membrane-fw/membrane/daemon/identity"
)

// cidrPolicy selects nobody and names n /24 prefixes of 10.first.0.0/16
// (each becomes a CIDR identity in the ipcache's table of shorter
// prefixes).
func cidrPolicy(first, n int) string {
	var b strings.Builder
	for i := range n {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%q", fmt.Sprintf("10.%d.%d.0/24", first, i))
	}
	return "policy \"cidrs\" {\n  selector = \"app=nobody\"\n  ingress {\n    from_cidr = [" + b.String() + "]\n  }\n}\n"
}

// pinnedPrefixes reads the prefixes shorter than an address that the
// pinned ipcache holds (the LPM trie; full-length addresses are in
// membrane_ipcache_exact).
func pinnedPrefixes(t *testing.T, pinDir string) []string {
	t.Helper()
	m, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, "membrane_ipcache"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	var (
		k struct {
			Prefixlen uint32
			Family    uint8
			_         [3]uint8
			Addr      [16]byte
		}
		v   []byte
		out []string
	)
	it := m.Iterate()
	for it.Next(&k, &v) {
		a := netip.AddrFrom16(k.Addr)
		if k.Family == 4 {
			a = netip.AddrFrom4([4]byte(k.Addr[:4]))
		}
		out = append(out, netip.PrefixFrom(a, int(k.Prefixlen)-32).String())
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	slices.Sort(out)
	return out
}

func wantPrefixes(first, n int) []string {
	var out []string
	for i := range n {
		out = append(out, fmt.Sprintf("10.%d.%d.0/24", first, i))
	}
	slices.Sort(out)
	return out
}

// scrapeAll returns the metrics text of the daemon at addr.
func scrapeAll(t *testing.T, addr string) string {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// scrapeWhenUp waits up to 5 s for the metrics listener at addr to accept
// connections, then scrapes it.
func scrapeWhenUp(t *testing.T, addr string) string {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			return scrapeAll(t, addr)
		}
		if time.Now().After(deadline) {
			t.Fatalf("metrics: %v", err)
		}
	}
}

func metricValue(text, series string) (float64, bool) {
	for _, l := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(l, series+" "); ok {
			var f float64
			fmt.Sscan(v, &f)
			return f, true
		}
	}
	return 0, false
}

// maps.ipcache sizes each of the ipcache's two tables, the full-length
// addresses (the host's, the endpoints') and the shorter prefixes (CIDR
// identities): a set whose prefixes fill their table exactly fits, also
// when the daemon starts with it and beside the host's addresses, and
// changes to another set of that size; the metrics say the table is full,
// not more than full. A set with one prefix more is rejected at the maps
// setting, and the set before it stays in the kernel whole.
func TestIPCacheTablesFillToTheirSizeAndNoFurther(t *testing.T) {
	d := newTestDaemon(t, testDaemonOpts{extra: "maps {\n  ipcache = 64\n}\n"})
	addr := freeLoopbackAddr(t)
	d.cfg.Metrics.Listen = addr
	d.writePolicy("cidrs.hcl", cidrPolicy(91, 64))
	d.start(nil, nil)

	st := d.waitStatus("reconciled", 20*time.Second, func(st api.Status) bool { return st.Reconciled })
	if st.PolicyRevision != 1 || st.LastPolicyError != nil || len(st.Errors) != 0 {
		t.Fatalf("started with 64 prefixes and maps.ipcache = 64: revision %d, error %s, problems %q; want revision 1, none, none",
			st.PolicyRevision, dumpJSON(st.LastPolicyError), st.Errors)
	}
	if got, want := pinnedPrefixes(t, d.cfg.BPFFSDir), wantPrefixes(91, 64); !slices.Equal(got, want) {
		t.Fatalf("ipcache prefixes %v, want %v", got, want)
	}
	// The metrics listener starts beside the API.
	text := scrapeWhenUp(t, addr)
	if v, ok := metricValue(text, `membrane_map_fill_ratio{map="ipcache"}`); !ok || v != 1 {
		t.Errorf(`membrane_map_fill_ratio{map="ipcache"} = %v (%v), want 1: the prefix table is exactly full`, v, ok)
	}
	if v, ok := metricValue(text, `membrane_map_entries{map="ipcache"}`); !ok || v != 64 {
		t.Errorf(`membrane_map_entries{map="ipcache"} = %v (%v), want 64 (the fuller table's)`, v, ok)
	}

	// Another 64 prefixes in place of these: it fits.
	d.writePolicy("cidrs.hcl", cidrPolicy(92, 64))
	st = d.waitStatus("the second set", 10*time.Second, func(st api.Status) bool { return st.PolicyRevision > 1 || st.LastPolicyError != nil })
	if st.PolicyRevision != 2 || st.LastPolicyError != nil || len(st.Errors) != 0 {
		t.Fatalf("64 other prefixes: revision %d, error %s, problems %q; want revision 2, none, none",
			st.PolicyRevision, dumpJSON(st.LastPolicyError), st.Errors)
	}
	if got, want := pinnedPrefixes(t, d.cfg.BPFFSDir), wantPrefixes(92, 64); !slices.Equal(got, want) {
		t.Fatalf("ipcache prefixes %v, want %v", got, want)
	}

	// One more than the table holds: rejected, at the setting to raise.
	d.writePolicy("cidrs.hcl", cidrPolicy(93, 65))
	st = d.waitStatus("the set too big", 10*time.Second, func(st api.Status) bool { return st.LastPolicyError != nil })
	if st.PolicyRevision != 2 {
		t.Errorf("a set too big for the ipcache moved the revision to %d", st.PolicyRevision)
	}
	msg := dumpJSON(st.LastPolicyError)
	if !strings.Contains(msg, "65 prefixes") || !strings.Contains(msg, "maps.ipcache is 64") {
		t.Errorf("rejection %s does not say the ipcache needs 65 prefixes and maps.ipcache is 64", msg)
	}
	if got, want := pinnedPrefixes(t, d.cfg.BPFFSDir), wantPrefixes(92, 64); !slices.Equal(got, want) {
		t.Fatalf("after the rejection, ipcache prefixes %v, want the last good set's %v", got, want)
	}
	text = scrapeAll(t, addr)
	for series, want := range map[string]float64{"membrane_policy_load_errors_total": 1, "membrane_policy_load_failing": 1, "membrane_policy_revision": 2} {
		if v, ok := metricValue(text, series); !ok || v != want {
			t.Errorf("%s = %v (%v), want %v", series, v, ok, want)
		}
	}
}

// membrane_map_entries{map="policy"} counts the policy map's entries: the
// identities of the endpoints there are now. Identities kept for
// identity_grace after their last endpoint went (here: read from the
// store at start, no endpoint holding any) take no place in it; counted,
// they made the map look full, or more than full, while every write went
// through.
func TestPolicyMapFillCountsTheMapNotTheIdentityStore(t *testing.T) {
	d := newTestDaemon(t, testDaemonOpts{extra: "maps {\n  policy = 16\n}\n"})
	addr := freeLoopbackAddr(t)
	d.cfg.Metrics.Listen = addr
	var ids []string
	for i := range 20 {
		ids = append(ids, fmt.Sprintf(`{"id": %d, "labels": {"app": "gone-%d"}}`, 256+i, i))
	}
	if err := os.MkdirAll(d.cfg.StateDir, 0o700); err != nil {
		t.Fatal(err)
	}
	store := `{"version": 1, "next": 276, "identities": [` + strings.Join(ids, ", ") + `]}`
	if err := os.WriteFile(filepath.Join(d.cfg.StateDir, identity.FileName), []byte(store), 0o600); err != nil {
		t.Fatal(err)
	}
	d.writePolicy("a.hcl", policyA)
	d.start(nil, nil)
	st := d.waitStatus("reconciled", 20*time.Second, func(st api.Status) bool { return st.Reconciled })
	if st.Identities != 20 || len(st.Errors) != 0 {
		t.Fatalf("status: %d identities, problems %q; want the 20 of the store, none", st.Identities, st.Errors)
	}
	text := scrapeWhenUp(t, addr)
	if v, ok := metricValue(text, "membrane_identities"); !ok || v != 20 {
		t.Errorf("membrane_identities = %v (%v), want 20", v, ok)
	}
	if v, ok := metricValue(text, `membrane_map_entries{map="policy"}`); !ok || v != 0 {
		t.Errorf(`membrane_map_entries{map="policy"} = %v (%v), want 0: no endpoint, no policy map entry`, v, ok)
	}
	if v, ok := metricValue(text, `membrane_map_fill_ratio{map="policy"}`); !ok || v != 0 {
		t.Errorf(`membrane_map_fill_ratio{map="policy"} = %v (%v), want 0`, v, ok)
	}
}

// freeLoopbackAddr is a loopback TCP address no one listens on now, for a
// test daemon's metrics.
func freeLoopbackAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"regexp"
	"runtime/pprof"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/membrane-fw/membrane/policies"
	"github.com/membrane-fw/membrane/proxy"
	"github.com/membrane-fw/membrane/proxy/builtin"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "l7bench:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) == 0 {
		return errors.New("usage: l7bench upstream|proxy|rate [flags]")
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	fs := flag.NewFlagSet(args[0], flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:0", "listen address")
	upstream := fs.String("upstream", "", "upstream address (proxy)")
	url := fs.String("url", "", "URLs to load, comma-separated (rate)")
	rps := fs.Int("rps", 1000, "requests per second (rate)")
	dur := fs.Duration("duration", 10*time.Second, "duration (rate)")
	conns := fs.Int("conns", 8, "keep-alive connections (rate)")
	cpuprofile := fs.String("cpuprofile", "", "write a CPU profile of the proxy to this file (proxy)")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	switch args[0] {
	case "upstream":
		return serveUpstream(ctx, *listen)
	case "proxy":
		if *cpuprofile != "" {
			f, err := os.Create(*cpuprofile)
			if err != nil {
				return err
			}
			if err := pprof.StartCPUProfile(f); err != nil {
				return err
			}
			defer pprof.StopCPUProfile()
		}
		return serveProxy(ctx, *listen, *upstream)
	case "rate":
		return rate(ctx, strings.Split(*url, ","), *rps, *dur, *conns)
	}
	return fmt.Errorf("unknown mode %q", args[0])
}

var body = []byte("hello from the upstream\n")

func serveUpstream(ctx context.Context, addr string) error {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		w.Write(body)
	})}
	go func() { <-ctx.Done(); srv.Close() }()
	fmt.Println("listening", l.Addr())
	if err := srv.Serve(l); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

func serveProxy(ctx context.Context, addr, upstream string) error {
	up, err := netip.ParseAddrPort(upstream)
	if err != nil {
		return fmt.Errorf("-upstream: %w", err)
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	// A realistic rule set: a few rules, the matching one not first.
	rule := func(id uint32, m, p string) policies.L7Rule {
		return policies.L7Rule{RuleID: id, HTTP: policies.HTTPRule{
			Method: regexp.MustCompile("^(?:" + m + ")$"), Path: regexp.MustCompile("^(?:" + p + ")$"),
		}}
	}
	res := &proxy.StaticResolver{Decision: proxy.Decision{SrcIdentity: 300, DstIdentity: 400, Checks: []proxy.Check{{
		Direction: policies.Ingress,
		Rules: policies.L7Set{Rules: []policies.L7Rule{
			rule(1, "POST", "/api/v1/orders"), rule(2, "GET", "/admin/.*"), rule(3, "GET|HEAD", "/public/.*"),
		}},
	}}}, Names: map[uint32]string{1: "bench", 2: "bench", 3: "bench"}}
	var events atomic.Int64
	e, err := builtin.New(builtin.Config{
		Listeners:   []net.Listener{l},
		Resolver:    res,
		OriginalDst: func(net.Conn) (netip.AddrPort, error) { return up, nil },
		Events:      func(proxy.Event) { events.Add(1) },
	})
	if err != nil {
		return err
	}
	fmt.Println("listening", l.Addr())
	<-ctx.Done()
	return e.Close()
}

// rate sends rps requests per second to each of urls, each over its own
// conns keep-alive connections, and prints a line per URL with its achieved
// rate and latency percentiles. With several URLs the requests interleave
// (one to each at every tick), so a moment of noise on the machine hits
// them all alike and their percentiles compare.
func rate(ctx context.Context, urls []string, rps int, dur time.Duration, conns int) error {
	type target struct {
		url  string
		c    *http.Client
		sem  chan struct{}
		mu   sync.Mutex
		lat  []time.Duration
		errs int
	}
	var ts []*target
	for _, u := range urls {
		tr := &http.Transport{MaxIdleConnsPerHost: conns, MaxConnsPerHost: conns}
		t := &target{url: u, c: &http.Client{Transport: tr, Timeout: 10 * time.Second}, sem: make(chan struct{}, conns*4)}
		// Warm up the connections.
		for i := 0; i < conns; i++ {
			if resp, err := t.c.Get(u); err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		}
		ts = append(ts, t)
	}
	var wg sync.WaitGroup
	// Open-loop schedule: tick i is due at start + i/rps whatever happened
	// before (a late tick goes at once), so a slow response does not lower
	// the offered rate.
	interval := time.Second / time.Duration(rps)
	start := time.Now()
	total := int(dur / interval)
	for i := 0; i < total; i++ {
		if d := time.Until(start.Add(time.Duration(i) * interval)); d > 0 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(d):
			}
		}
		for _, t := range ts {
			t.sem <- struct{}{}
			wg.Add(1)
			go func() {
				defer func() { <-t.sem; wg.Done() }()
				t0 := time.Now()
				resp, err := t.c.Get(t.url)
				if err == nil {
					_, err = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != 200 {
						err = fmt.Errorf("status %d", resp.StatusCode)
					}
				}
				d := time.Since(t0)
				t.mu.Lock()
				if err != nil {
					t.errs++
				} else {
					t.lat = append(t.lat, d)
				}
				t.mu.Unlock()
			}()
		}
	}
	wg.Wait()
	elapsed := time.Since(start)
	for _, t := range ts {
		if len(t.lat) == 0 {
			return fmt.Errorf("%s: no successful requests", t.url)
		}
		slices.Sort(t.lat)
		p := func(q float64) float64 { return float64(t.lat[int(q*float64(len(t.lat)-1))].Microseconds()) }
		fmt.Printf("requests %d errors %d rate %.0f/s p50_us %.0f p99_us %.0f url %s\n",
			len(t.lat), t.errs, float64(len(t.lat))/elapsed.Seconds(), p(0.50), p(0.99), t.url)
	}
	return nil
}

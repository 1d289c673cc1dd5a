package envoy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Supervisor runs one Envoy process and restarts it when it exits, with
// exponential backoff (reset after a minute of uptime).
type Supervisor struct {
	Path        string   // the envoy binary
	Args        []string // its arguments
	AdminSocket string
	Logger      *slog.Logger
	// MinBackoff and MaxBackoff bound the wait before a restart; defaults
	// 250ms and 30s.
	MinBackoff, MaxBackoff time.Duration
	// OnExit, when set, is told every exit (for metrics).
	OnExit func(err error)
	// HealthInterval is how often a running Envoy's /ready is checked once
	// it has been ready; after HealthFailures failures in a row the process
	// is killed (and so restarted). Defaults 5s and 3.
	HealthInterval time.Duration
	HealthFailures int
	// NotReadyGrace is how long a started Envoy may go without answering
	// /ready before Problem reports it; default 30s, what membraned waits
	// for the first Envoy at start.
	NotReadyGrace time.Duration

	starts atomic.Int64

	mu        sync.Mutex
	pid       int       // the running process, 0 between runs
	startedAt time.Time // when it was started
	ready     bool      // it answered /ready since it was started
	exits     int       // exits and failed starts since an Envoy last answered /ready
	lastExit  error     // the last of them
}

// Problem says what keeps the supervised Envoy from serving ("" when it
// serves, or was started moments ago): exits since it last answered
// /ready, or a process that has not answered it within NotReadyGrace.
// Connections the datapath sends to the proxy port meanwhile find no
// listener, or one that does not serve, and fail.
func (s *Supervisor) Problem() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ready {
		return ""
	}
	if s.exits > 0 {
		times := "once"
		if s.exits > 1 {
			times = strconv.Itoa(s.exits) + " times"
		}
		return fmt.Sprintf("envoy exited or did not start %s since it last served (last: %v); membraned restarts it with backoff, and connections sent to the L7 proxy fail until it serves",
			times, s.lastExit)
	}
	grace := s.NotReadyGrace
	if grace == 0 {
		grace = 30 * time.Second
	}
	if el := time.Since(s.startedAt); s.pid != 0 && s.AdminSocket != "" && el >= grace {
		return fmt.Sprintf("envoy (pid %d) has not answered /ready on its admin socket %s in the %v since it started; connections sent to the L7 proxy fail until it serves",
			s.pid, s.AdminSocket, el.Round(time.Second))
	}
	return ""
}

func (s *Supervisor) started(pid int) {
	s.mu.Lock()
	s.pid, s.startedAt, s.ready = pid, time.Now(), false
	s.mu.Unlock()
}

func (s *Supervisor) exited(err error) {
	s.mu.Lock()
	if err == nil {
		err = errors.New("exit status 0")
	}
	s.pid, s.ready = 0, false
	s.exits++
	s.lastExit = err
	s.mu.Unlock()
}

func (s *Supervisor) served() {
	s.mu.Lock()
	s.ready, s.exits, s.lastExit = true, 0, nil
	s.mu.Unlock()
}

// Starts counts how often the process was started.
func (s *Supervisor) Starts() int64 { return s.starts.Load() }

// Run starts Envoy and keeps it running until ctx is done; then it stops the
// process (SIGTERM, then SIGKILL after 5s) and returns nil.
func (s *Supervisor) Run(ctx context.Context) error {
	log := s.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	minB, maxB := s.MinBackoff, s.MaxBackoff
	if minB == 0 {
		minB = 250 * time.Millisecond
	}
	if maxB == 0 {
		maxB = 30 * time.Second
	}
	backoff := minB
	for {
		cmd := exec.Command(s.Path, s.Args...)
		stderr, err := cmd.StderrPipe()
		if err == nil {
			err = cmd.Start()
		}
		started := time.Now()
		if err != nil {
			// A binary that is missing or being replaced (a package
			// upgrade), or no file descriptor left for the pipe: it may
			// work at the next try, so wait as after an exit.
			err = fmt.Errorf("starting %s: %w", s.Path, err)
			s.exited(err)
			log.Warn("envoy did not start; trying again", "err", err, "after", backoff)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, maxB)
			continue
		}
		s.starts.Add(1)
		s.started(cmd.Process.Pid)
		log.Info("envoy started", "pid", cmd.Process.Pid)
		exited := make(chan error, 1)
		go func() {
			// Wait only once stderr is read to its end (os/exec closes
			// the pipe in Wait): Envoy's last words say why it exited.
			last := logLines(stderr, log)
			err := cmd.Wait()
			if err != nil && last != "" {
				err = fmt.Errorf("%w: %s", err, last)
			}
			exited <- err
		}()
		healthCtx, stopHealth := context.WithCancel(ctx)
		go s.watchHealth(healthCtx, cmd, log)
		select {
		case <-ctx.Done():
			stopHealth()
			_ = cmd.Process.Signal(terminate)
			select {
			case <-exited:
			case <-time.After(5 * time.Second):
				_ = cmd.Process.Kill()
				<-exited
			}
			return nil
		case err := <-exited:
			stopHealth()
			s.exited(err)
			if s.OnExit != nil {
				s.OnExit(err)
			}
			if time.Since(started) > time.Minute {
				backoff = minB
			}
			log.Warn("envoy exited; restarting", "err", err, "after", backoff)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, maxB)
		}
	}
}

// watchHealth kills a hung Envoy: one that was ready and then stopped
// answering /ready.
func (s *Supervisor) watchHealth(ctx context.Context, cmd *exec.Cmd, log *slog.Logger) {
	if s.AdminSocket == "" {
		return
	}
	interval, limit := s.HealthInterval, s.HealthFailures
	if interval == 0 {
		interval = 5 * time.Second
	}
	if limit == 0 {
		limit = 3
	}
	wasReady, failures := false, 0
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		cctx, cancel := context.WithTimeout(ctx, interval)
		err := Ready(cctx, s.AdminSocket)
		cancel()
		switch {
		case err == nil:
			wasReady, failures = true, 0
			s.served()
		case wasReady && ctx.Err() == nil:
			failures++
			if failures >= limit {
				log.Warn("envoy stopped answering its admin socket; killing it for a restart", "err", err)
				_ = cmd.Process.Kill()
				return
			}
		}
	}
}

// logLines logs what Envoy writes on stderr, which at --log-level warn
// is warnings and errors, until it ends; it returns the last line.
func logLines(r io.Reader, log *slog.Logger) string {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	last := ""
	for sc.Scan() {
		last = strings.TrimSpace(sc.Text())
		if len(last) > 512 {
			last = last[:512] + "..."
		}
		log.Warn("envoy", "line", sc.Text())
	}
	return last
}

// ErrNotReady is returned by Ready while Envoy runs but is not serving yet.
var ErrNotReady = errors.New("envoy is not ready")

// Ready asks Envoy's admin interface (GET /ready on the admin socket)
// whether it is serving: nil when it answers 200 LIVE.
func Ready(ctx context.Context, adminSocket string) error {
	c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", adminSocket)
	}}}
	defer c.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, "GET", "http://envoy/ready", nil)
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return fmt.Errorf("envoy admin: %w", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 256))
	if resp.StatusCode != 200 || !strings.Contains(string(b), "LIVE") {
		return fmt.Errorf("%w: /ready answered %d %q", ErrNotReady, resp.StatusCode, strings.TrimSpace(string(b)))
	}
	return nil
}

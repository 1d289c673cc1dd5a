package api

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"syscall"
	"time"
)

// DefaultSocket is where the CLI looks when neither --socket nor
// MEMBRANE_SOCKET says otherwise.
const DefaultSocket = "/run/membrane/membrane.sock"

// apiHost is the Host the client sends and the server accepts (besides
// localhost).
const apiHost = "membraned"

// StreamErrorTrailer is the trailer that ends an observe stream cut short
// by the daemon (a follower that fell behind), with what happened.
const StreamErrorTrailer = "Membrane-Stream-Error"

// ErrDaemonDown means nothing answers on the socket.
var ErrDaemonDown = errors.New("membraned is not running")

// Client talks to membraned over its unix socket.
type Client struct {
	Socket string
	http   *http.Client
}

// NewClient returns a client for the socket at path.
func NewClient(path string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
		DisableCompression: true,
	}
	return &Client{Socket: path, http: &http.Client{Transport: tr}}
}

// StatusError is an error answer from the daemon.
type StatusError struct {
	Code    int
	Message string
}

func (e *StatusError) Error() string { return e.Message }

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://"+apiHost+path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return c.dialError(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return c.readError(resp)
	}
	if out == nil {
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("reading membraned's answer: %w", err)
	}
	return nil
}

func (c *Client) dialError(err error) error {
	if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
		// The kernel refuses a connection to a file that is not a socket
		// as it does to a socket nobody listens on: not the same mistake.
		if fi, serr := os.Stat(c.Socket); serr == nil && fi.Mode().Type() != fs.ModeSocket {
			return fmt.Errorf("%s is %s, not a socket: --socket (or MEMBRANE_SOCKET) names membraned's API socket, api_socket in membrane.hcl (default %s)", c.Socket, fileKind(fi.Mode()), DefaultSocket)
		}
		return fmt.Errorf("%w (no answer on %s; start it with `systemctl start membraned`, or pass --socket)", ErrDaemonDown, c.Socket)
	}
	if errors.Is(err, syscall.EACCES) {
		return fmt.Errorf("cannot connect to %s: permission denied (run as root or as a member of group membrane)", c.Socket)
	}
	return fmt.Errorf("talking to membraned at %s: %w", c.Socket, err)
}

// fileKind names the kind of file mode is, with its article.
func fileKind(mode fs.FileMode) string {
	switch {
	case mode.IsRegular():
		return "a regular file"
	case mode.IsDir():
		return "a directory"
	case mode&fs.ModeNamedPipe != 0:
		return "a named pipe"
	case mode&fs.ModeDevice != 0:
		return "a device"
	}
	return "a " + mode.Type().String() + " file"
}

// readError is the error of an answer that is not 200: the daemon's
// message, which every error of membraned carries; without one, the
// server is not membraned (another's socket: Docker's is a likely slip),
// or one from before the API answered every error so.
func (c *Client) readError(resp *http.Response) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	var eb ErrorBody
	if json.Unmarshal(b, &eb) == nil && eb.Error != "" {
		return &StatusError{Code: resp.StatusCode, Message: eb.Error}
	}
	return &StatusError{Code: resp.StatusCode, Message: fmt.Sprintf("%s answered %s, not as membraned answers: is it membraned's API socket (--socket, MEMBRANE_SOCKET; api_socket in membrane.hcl)?", c.Socket, resp.Status)}
}

// Status returns the daemon's status.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var s Status
	err := c.do(ctx, http.MethodGet, "/v1/status", nil, &s)
	return s, err
}

// Endpoints lists the managed endpoints.
func (c *Client) Endpoints(ctx context.Context) ([]Endpoint, error) {
	var eps []Endpoint
	err := c.do(ctx, http.MethodGet, "/v1/endpoints", nil, &eps)
	return eps, err
}

// Endpoint finds one endpoint by id, container name or container id.
func (c *Client) Endpoint(ctx context.Context, ref string) (Endpoint, error) {
	var ep Endpoint
	err := c.do(ctx, http.MethodGet, "/v1/endpoints/"+url.PathEscape(ref), nil, &ep)
	return ep, err
}

// Identities lists the identities.
func (c *Client) Identities(ctx context.Context) ([]Identity, error) {
	var ids []Identity
	err := c.do(ctx, http.MethodGet, "/v1/identities", nil, &ids)
	return ids, err
}

// Policy returns the enforced policy set's summary.
func (c *Client) Policy(ctx context.Context) (Policy, error) {
	var p Policy
	err := c.do(ctx, http.MethodGet, "/v1/policy", nil, &p)
	return p, err
}

// Trace evaluates one connection against the live daemon's state.
func (c *Client) Trace(ctx context.Context, req TraceRequest) (TraceResult, error) {
	var r TraceResult
	err := c.do(ctx, http.MethodPost, "/v1/policy/trace", req, &r)
	return r, err
}

// ReloadPolicies asks the daemon to re-read its policy directory.
func (c *Client) ReloadPolicies(ctx context.Context) (Policy, error) {
	var p Policy
	err := c.do(ctx, http.MethodPost, "/v1/policy/reload", struct{}{}, &p)
	return p, err
}

// Resync asks for a full resync of the datapath.
func (c *Client) Resync(ctx context.Context) (Status, error) {
	var s Status
	err := c.do(ctx, http.MethodPost, "/v1/resync", struct{}{}, &s)
	return s, err
}

// Observe streams flows to fn until the stream ends (without Follow: after
// the backlog), ctx ends, or fn returns an error.
func (c *Client) Observe(ctx context.Context, f ObserveFilter, fn func(Flow) error) error {
	q := url.Values{}
	if f.Follow {
		q.Set("follow", "1")
	}
	if f.Verdict != "" {
		q.Set("verdict", f.Verdict)
	}
	if f.Container != "" {
		q.Set("container", f.Container)
	}
	if f.Type != "" {
		q.Set("type", f.Type)
	}
	if f.Direction != "" {
		q.Set("direction", f.Direction)
	}
	if f.Last > 0 {
		q.Set("last", strconv.Itoa(f.Last))
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+apiHost+"/v1/observe?"+q.Encode(), nil)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return c.dialError(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return c.readError(resp)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		var fl Flow
		if err := json.Unmarshal(sc.Bytes(), &fl); err != nil {
			return fmt.Errorf("reading flow: %w", err)
		}
		if err := fn(fl); err != nil {
			return err
		}
	}
	if ctx.Err() != nil {
		return nil
	}
	if err := sc.Err(); err != nil {
		return err
	}
	// Trailers are read with the body's end.
	if msg := resp.Trailer.Get(StreamErrorTrailer); msg != "" {
		return &StatusError{Code: resp.StatusCode, Message: msg}
	}
	return nil
}

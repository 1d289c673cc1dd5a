package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/membrane-fw/membrane/daemon/api"
)

func TestTermSafeEscapesControls(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"plain text\twith tab\n", "plain text\twith tab\n"},
		{"héllo ✓", "héllo ✓"},
		{"\x1b]0;owned\x07", `\x1b]0;owned\x07`},
		{"a\rb", `a\x0db`},
		{"\u009b31m", `\u009b31m`},
		{"\x9b31m", `\x9b31m`},
		{"del\x7f", `del\x7f`},
	} {
		var b bytes.Buffer
		n, err := termSafe(&b).Write([]byte(tc.in))
		if err != nil || n != len(tc.in) || b.String() != tc.want {
			t.Errorf("%q: wrote %q (n %d, err %v), want %q", tc.in, b.String(), n, err, tc.want)
		}
	}
}

// What others wrote reaches the text output of observe and endpoint list
// escaped: a Nomad job's author sets its container's labels, and anyone
// who reaches a proxied port sends the host an HTTP request carries.
func TestDaemonDataIsPrintedWithoutControls(t *testing.T) {
	b := &cliBackend{hub: api.NewFlowHub(10)}
	sock := serve(t, b)
	b.hub.Publish(api.Flow{Time: time.Now(), Type: api.FlowL7, Verdict: "denied",
		Source: api.Peer{IP: "192.0.2.7", Labels: map[string]string{"reserved": "world"}},
		Dest:   api.Peer{IP: "172.17.0.5", Port: 80, Container: "web-1", Labels: map[string]string{"team": "\x1b[8m"}},
		HTTP:   &api.HTTPInfo{Method: "GET", Host: "x\u009b2J", Path: "/", Status: 403}})
	out, code := run(t, "observe", "--socket", sock)
	if code != 0 || strings.ContainsAny(out, "\x1b\u009b") || !strings.Contains(out, `\x1b[8m`) || !strings.Contains(out, `x\u009b2J`) {
		t.Errorf("observe: exit %d, output %q", code, out)
	}
}

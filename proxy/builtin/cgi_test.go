package builtin

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/membrane-fw/membrane/internal/testenv"
)

// startCGIServer runs busybox httpd on a loopback port, serving
// /cgi-bin/tenant: a CGI script that answers with the variable
// HTTP_X_TENANT, the X-Tenant field as the script reads it.
func startCGIServer(t *testing.T) netip.AddrPort {
	t.Helper()
	bb := testenv.RequireBinary(t, "busybox")
	root := t.TempDir()
	if err := os.Mkdir(filepath.Join(root, "cgi-bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	script := "#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\nHTTP_X_TENANT=%s' \"$HTTP_X_TENANT\"\n"
	if err := os.WriteFile(filepath.Join(root, "cgi-bin", "tenant"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := netip.MustParseAddrPort(l.Addr().String())
	l.Close()
	cmd := exec.Command(bb, "httpd", "-f", "-p", addr.String(), "-h", root)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	for deadline := time.Now().Add(5 * time.Second); ; {
		c, err := net.Dial("tcp4", addr.String())
		if err == nil {
			c.Close()
			return addr
		}
		if time.Now().After(deadline) {
			t.Fatalf("busybox httpd on %s: %v", addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestFieldAliasesOfEverySeparatorRefused: CGI servers (busybox httpd,
// lighttpd) name a field's variable with every character but letters and
// digits turned to '_', so X.Tenant, X~Tenant and X+Tenant all set
// HTTP_X_TENANT, as X_Tenant does. With a rule on X-Tenant = acme, a
// request carrying X-Tenant: acme and X.Tenant: evil must not reach a
// script that then reads evil: it gets 400. Checked against busybox httpd
// itself, directly (what the server reads) and through the engine.
func TestFieldAliasesOfEverySeparatorRefused(t *testing.T) {
	up := startCGIServer(t)
	addr, _ := engineFor(t, up, headerRuleResolver("X-Tenant", "acme"))
	for _, alias := range []string{"X.Tenant", "x~tenant", "X+Tenant", "X!Tenant", "X_Tenant"} {
		req := fmt.Sprintf("GET /cgi-bin/tenant HTTP/1.1\r\nHost: svc\r\nX-Tenant: acme\r\n%s: evil\r\nConnection: close\r\n\r\n", alias)
		direct := dialClient(t, up.String())
		direct.send(req)
		if resp, body := direct.read("GET"); resp.StatusCode != 200 || !strings.Contains(body, "HTTP_X_TENANT=evil") {
			t.Fatalf("%s straight to busybox httpd: %d %q; want the script to read evil (else the test shows nothing)", alias, resp.StatusCode, body)
		}
		c := dialClient(t, addr)
		c.send(req)
		if resp, body := c.read("GET"); resp.StatusCode != 400 {
			t.Errorf("X-Tenant: acme and %s: evil through the proxy: %d %q, want 400", alias, resp.StatusCode, body)
		}
	}
	// The judged field alone is served, and other names pass.
	c := dialClient(t, addr)
	c.send("GET /cgi-bin/tenant HTTP/1.1\r\nHost: svc\r\nX-Tenant: acme\r\nX.Tenants: x\r\nX.Other: y\r\nConnection: close\r\n\r\n")
	if resp, body := c.read("GET"); resp.StatusCode != 200 || !strings.Contains(body, "HTTP_X_TENANT=acme") {
		t.Fatalf("X-Tenant: acme: %d %q, want 200 from the script", resp.StatusCode, body)
	}
}

package proxy

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"

	"github.com/membrane-fw/membrane/internal/testenv"
)

// A proxy port that another process holds is said to be so, with the
// setting to change: the error used to blame a missing CAP_NET_ADMIN,
// which membraned running as root has, and `membrane status` showed that.
func TestTransparentListenerOnAPortInUseSaysSo(t *testing.T) {
	testenv.RequireRoot(t)
	other, err := net.Listen("tcp4", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	port := other.Addr().(*net.TCPAddr).Port
	ls, err := ListenTransparent(context.Background(), uint16(port))
	if err == nil {
		for _, l := range ls {
			l.Close()
		}
		t.Fatalf("listening on port %d, which another socket holds, succeeded", port)
	}
	msg := err.Error()
	if strings.Contains(msg, "CAP_NET_ADMIN") || !strings.Contains(msg, fmt.Sprintf("port %d is in use by another process", port)) || !strings.Contains(msg, "l7 { port }") {
		t.Fatalf("error %q: want it to say the port is in use and to name l7 { port }, not CAP_NET_ADMIN", msg)
	}
}

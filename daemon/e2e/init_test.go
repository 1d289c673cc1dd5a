package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/membrane-fw/membrane/daemon/api"
	"github.com/membrane-fw/membrane/policies"
)

// A container whose identity's policy cannot be written is held back: its
// veth has no endpoint entry and is judged as init. Its address used to
// stay its identity's in the ipcache, so with unknown_endpoint = "allow"
// everything it sent was dropped as spoofed-source (init may not use
// another identity's address), and a peer's rule for init never admitted
// it. Its address is init's now, as its traffic is: a peer's rule for init
// admits it, one for the world does not.
func TestHeldEndpointIsInitToItsPeers(t *testing.T) {
	e := newEnv(t, envOpts{extraConfig: "unknown_endpoint = \"allow\"\nmaps {\n  policy_entries = 64\n}\n"})
	e.writePolicy("peers.hcl", `
policy "init-peer" {
  selector = "app=initpeer,e2e=SFX"
  ingress {
    from_entities = ["init"]
    ports         = ["8080/tcp"]
  }
}
policy "world-peer" {
  selector = "app=worldpeer,e2e=SFX"
  ingress {
    from_entities = ["world"]
    ports         = ["8080/tcp"]
  }
}
policy "wide" {
  selector = "tier=wide,e2e=SFX"
  ingress {
    from_entities = ["world"]
    ports         = `+manyPorts(20001, 70)+`
  }
}
`)
	e.startDaemon()
	initPeer, worldPeer := e.server("initpeer", "app=initpeer"), e.server("worldpeer", "app=worldpeer")
	e.endpoint(initPeer)
	e.endpoint(worldPeer)
	initIP, worldIP := e.ip(initPeer), e.ip(worldPeer)

	wide := e.idle("wide", "tier=wide")
	e.waitHeld(wide)
	e.eventually("the rule for init admits the held container", 20*time.Second, func() error {
		if !e.get(wide, initIP) {
			return fmt.Errorf("%s does not reach %s", wide, initPeer)
		}
		return nil
	})
	if e.get(wide, worldIP) {
		t.Errorf("the rule for the world admitted the held container")
	}
	// policy trace --live judges it as the datapath does: as init.
	for _, c := range []struct {
		to, want string
	}{{initPeer, "allowed"}, {worldPeer, "denied"}} {
		res, err := e.client.Trace(context.Background(), api.TraceRequest{FromContainer: wide, ToContainer: c.to, Proto: "tcp", Port: 8080})
		if err != nil {
			t.Fatal(err)
		}
		var r struct{ Verdict string }
		if err := json.Unmarshal(res.Result, &r); err != nil {
			t.Fatal(err)
		}
		if r.Verdict != c.want || res.From.Identity != uint32(policies.IdentityInit) {
			t.Errorf("trace %s -> %s: %s from identity %d, want %s from init:\n%s", wide, c.to, r.Verdict, res.From.Identity, c.want, res.Text)
		}
	}
}

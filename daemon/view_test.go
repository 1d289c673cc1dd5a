package daemon

import (
	"slices"
	"strings"
	"testing"

	"github.com/membrane-fw/membrane/daemon/config"
	"github.com/membrane-fw/membrane/daemon/identity"
	"github.com/membrane-fw/membrane/runtime/endpoint"
	"github.com/membrane-fw/membrane/runtime/linkwatch"
)

// An endpoint whose network namespace its runtime source could not read
// (endpoint.Endpoint.Stale) stays, with its interfaces as last read; status
// and the endpoint's view say so, since what is enforced may be out of date.
func TestStaleEndpointIsAStatusProblem(t *testing.T) {
	ids, err := identity.Open(t.TempDir(), identity.Options{})
	if err != nil {
		t.Fatal(err)
	}
	r := &reconciler{cfg: config.Default(), ids: ids, problems: map[string]string{}, veths: map[int]linkwatch.Event{},
		eps: map[string]*epState{"c1": {id: 7, identity: 256, ep: endpoint.Endpoint{
			ID: "c1", Runtime: endpoint.RuntimeDocker, NetworkMode: endpoint.ModeBridge,
			Containers: []endpoint.Container{{ID: "c1", Name: "web"}},
			Stale:      "network namespace unreadable: too many open files",
		}}}}
	r.publish()
	v := r.view.get()
	if !slices.ContainsFunc(v.status.Errors, func(e string) bool {
		return strings.HasPrefix(e, "endpoint 7 (web): network namespace unreadable: too many open files;")
	}) {
		t.Errorf("status errors %q: want the stale endpoint", v.status.Errors)
	}
	if len(v.endpoints) != 1 || v.endpoints[0].Stale == "" {
		t.Errorf("endpoints %+v: want Stale on web's", v.endpoints)
	}
}

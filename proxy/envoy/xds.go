package envoy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"

	clusterservice "github.com/envoyproxy/go-control-plane/envoy/service/cluster/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	listenerservice "github.com/envoyproxy/go-control-plane/envoy/service/listener/v3"
	routeservice "github.com/envoyproxy/go-control-plane/envoy/service/route/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/log"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
)

// XDS serves ADS (state of the world) for NodeID over a unix socket.
type XDS struct {
	cache   cachev3.SnapshotCache
	srv     *grpc.Server
	l       net.Listener
	log     *slog.Logger
	mu      sync.Mutex
	version uint64
	done    chan struct{}

	// rejected holds, by resource type URL, what Envoy last said when it
	// refused a snapshot's resources of that type (a NACK); an ACK of the
	// type clears it. Envoy keeps the resources it last accepted.
	rmu      sync.Mutex
	rejected map[string]string
}

func goControlPlaneLogger(l *slog.Logger) log.Logger {
	return log.LoggerFuncs{
		DebugFunc: func(f string, a ...any) { l.Debug(fmt.Sprintf(f, a...)) },
		InfoFunc:  func(f string, a ...any) { l.Debug(fmt.Sprintf(f, a...)) },
		WarnFunc:  func(f string, a ...any) { l.Warn(fmt.Sprintf(f, a...)) },
		ErrorFunc: func(f string, a ...any) { l.Error(fmt.Sprintf(f, a...)) },
	}
}

// ServeXDS listens on socketPath (a stale socket file is replaced; mode
// 0600: only root's Envoy may read the policy) and serves until Close.
func ServeXDS(socketPath string, logger *slog.Logger) (*XDS, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if err := os.Remove(socketPath); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("xds: removing stale socket: %w", err)
	}
	l, err := net.Listen("unix", socketPath)
	if err != nil {
		return nil, fmt.Errorf("xds: listen on %s: %w", socketPath, err)
	}
	if err := os.Chmod(socketPath, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("xds: %w", err)
	}
	x := &XDS{
		cache: cachev3.NewSnapshotCache(true, cachev3.IDHash{}, goControlPlaneLogger(logger)),
		srv:   grpc.NewServer(),
		l:     l,
		log:   logger,
		done:  make(chan struct{}),

		rejected: map[string]string{},
	}
	s := serverv3.NewServer(context.Background(), x.cache, serverv3.CallbackFuncs{StreamRequestFunc: x.onRequest})
	discoverygrpc.RegisterAggregatedDiscoveryServiceServer(x.srv, s)
	listenerservice.RegisterListenerDiscoveryServiceServer(x.srv, s)
	clusterservice.RegisterClusterDiscoveryServiceServer(x.srv, s)
	routeservice.RegisterRouteDiscoveryServiceServer(x.srv, s)
	go func() {
		defer close(x.done)
		if err := x.srv.Serve(l); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			logger.Error("xds server stopped", "err", err)
		}
	}()
	return x, nil
}

// Set publishes res as the next snapshot version. An inconsistent snapshot
// is refused and the previous one stays.
func (x *XDS) Set(res *Resources) (version string, err error) {
	x.mu.Lock()
	defer x.mu.Unlock()
	v := strconv.FormatUint(x.version+1, 10)
	snap, err := cachev3.NewSnapshot(v, map[resource.Type][]types.Resource{
		resource.ListenerType: res.Listeners,
		resource.RouteType:    res.Routes,
		resource.ClusterType:  res.Clusters,
	})
	if err != nil {
		return "", fmt.Errorf("xds snapshot: %w", err)
	}
	if err := snap.Consistent(); err != nil {
		return "", fmt.Errorf("xds snapshot inconsistent: %w", err)
	}
	if err := x.cache.SetSnapshot(context.Background(), NodeID, snap); err != nil {
		return "", fmt.Errorf("xds snapshot: %w", err)
	}
	x.version++
	return v, nil
}

// onRequest notes Envoy's answer to what it was sent: a request carrying
// an error detail is a NACK (Envoy refused the resources of that type and
// goes on with those it accepted before, VersionInfo); one with a version
// and no error is an ACK.
func (x *XDS) onRequest(_ int64, req *discoverygrpc.DiscoveryRequest) error {
	typ := req.GetTypeUrl()
	x.rmu.Lock()
	defer x.rmu.Unlock()
	switch {
	case req.GetErrorDetail() != nil:
		kept := req.GetVersionInfo()
		if kept == "" {
			kept = "none"
		}
		msg := fmt.Sprintf("envoy rejected the %s membraned sent it (the last policy change may not be in force; it keeps the %s of xDS version %s): %s",
			typeName(typ), typeName(typ), kept, strings.TrimSpace(req.GetErrorDetail().GetMessage()))
		if x.rejected[typ] != msg {
			x.log.Error("envoy rejected its configuration", "type", typ, "kept_version", kept, "err", req.GetErrorDetail().GetMessage())
		}
		x.rejected[typ] = msg
	case req.GetVersionInfo() != "":
		delete(x.rejected, typ)
	}
	return nil
}

// typeName is what a resource type URL is called in a status line.
func typeName(typeURL string) string {
	switch typeURL {
	case resource.ListenerType:
		return "listeners"
	case resource.RouteType:
		return "routes"
	case resource.ClusterType:
		return "clusters"
	}
	return typeURL
}

// Rejected lists, sorted, what Envoy said when it last refused resources
// it was sent, one line per resource type it refuses still; nil when it
// took everything.
func (x *XDS) Rejected() []string {
	x.rmu.Lock()
	defer x.rmu.Unlock()
	var out []string
	for _, m := range x.rejected {
		out = append(out, m)
	}
	slices.Sort(out)
	return out
}

// Close stops serving.
func (x *XDS) Close() {
	x.srv.Stop()
	<-x.done
}

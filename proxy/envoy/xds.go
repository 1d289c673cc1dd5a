package envoy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
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
	}
	s := serverv3.NewServer(context.Background(), x.cache, nil)
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

// Close stops serving.
func (x *XDS) Close() {
	x.srv.Stop()
	<-x.done
}

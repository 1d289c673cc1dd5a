package daemon

import (
	"log/slog"
	"os"

	"github.com/membrane-fw/membrane/daemon/config"
	"github.com/membrane-fw/membrane/runtime/containerd"
	"github.com/membrane-fw/membrane/runtime/linkwatch"
)

// containerdSource returns the containerd source when it is enabled and
// its socket exists (a host without containerd must not hold the first
// reconcile back waiting for a list that never comes). Docker's own
// namespace ("moby") is skipped when the Docker source runs: Docker
// reports those containers with their Docker names and labels.
func containerdSource(cfg *config.Config, log *slog.Logger, resolvers *[]linkwatch.Resolver) []namedSource {
	if !cfg.Containerd.Enabled {
		return nil
	}
	if _, err := os.Stat(cfg.Containerd.Socket); err != nil {
		log.Info("containerd socket not found; not watching containerd", "socket", cfg.Containerd.Socket)
		return nil
	}
	src := containerd.New(containerd.Config{
		Address:    cfg.Containerd.Socket,
		Namespaces: cfg.Containerd.Namespaces,
		SkipMoby:   cfg.Docker.Enabled,
		Logger:     log,
	})
	*resolvers = append(*resolvers, src)
	return []namedSource{{name: "containerd", src: src}}
}

package daemon

import (
	"log/slog"

	"github.com/membrane-fw/membrane/daemon/config"
	"github.com/membrane-fw/membrane/runtime/linkwatch"
)

// containerdSource returns the containerd source when it is enabled.
// runtime/containerd is wired once it lands.
func containerdSource(cfg *config.Config, log *slog.Logger, resolvers *[]linkwatch.Resolver) []namedSource {
	return nil
}

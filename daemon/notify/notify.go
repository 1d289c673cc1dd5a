package notify

import (
	"log/slog"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
)

// Notifier sends state changes to systemd.
type Notifier struct {
	log      *slog.Logger
	watchdog time.Duration
}

// New reads the watchdog interval from the environment (WATCHDOG_USEC).
func New(log *slog.Logger) *Notifier {
	n := &Notifier{log: log}
	if d, err := daemon.SdWatchdogEnabled(false); err == nil && d > 0 {
		n.watchdog = d
	}
	return n
}

// WatchdogInterval is how often Watchdog must be called: half of
// WatchdogSec, as sd_watchdog_enabled(3) advises; 0 when disabled.
func (n *Notifier) WatchdogInterval() time.Duration { return n.watchdog / 2 }

func (n *Notifier) send(state string) {
	if _, err := daemon.SdNotify(false, state); err != nil {
		n.log.Debug("sd_notify failed", "state", state, "err", err)
	}
}

// Ready says the first full reconcile is done.
func (n *Notifier) Ready() { n.send(daemon.SdNotifyReady) }

// Status sets the one-line status `systemctl status` shows.
func (n *Notifier) Status(s string) { n.send("STATUS=" + s) }

// Watchdog pings the watchdog.
func (n *Notifier) Watchdog() {
	if n.watchdog > 0 {
		n.send(daemon.SdNotifyWatchdog)
	}
}

// Stopping says shutdown began.
func (n *Notifier) Stopping() { n.send(daemon.SdNotifyStopping) }

// Package notify speaks systemd's notify protocol for membraned
// (Type=notify): READY=1 after the first full reconcile, STATUS= lines with
// counts, WATCHDOG=1 pings from the reconcile loop (so a stuck loop gets the
// daemon restarted), and STOPPING=1 on shutdown. Outside systemd
// (NOTIFY_SOCKET unset) every call is a no-op.
package notify

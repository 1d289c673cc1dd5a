// Command mkpkg builds Membrane's .deb and .rpm from bin/ (`make package`
// runs it through hack/package.sh after `make build`).
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/membrane-fw/membrane/packaging"
)

func main() {
	var opts packaging.Options
	var formats string
	flag.StringVar(&opts.RepoRoot, "repo", ".", "the checkout (systemd/, docs/, examples/, README.md, LICENSE)")
	flag.StringVar(&opts.BinDir, "bin", "bin", "directory holding membrane and membraned")
	flag.StringVar(&opts.OutDir, "out", "dist", "where the packages go")
	flag.StringVar(&opts.Version, "version", "", "version to stamp (default: what bin/membrane version says)")
	flag.StringVar(&formats, "formats", "deb,rpm", "comma-separated package formats")
	flag.Parse()
	if flag.NArg() != 0 {
		fmt.Fprintln(os.Stderr, "mkpkg: no arguments expected; see -help")
		os.Exit(2)
	}
	opts.Formats = strings.Split(formats, ",")
	opts.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	opts.MTime = sourceDate(opts.RepoRoot)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	res, err := packaging.Build(ctx, opts)
	if err != nil {
		fmt.Fprintln(os.Stderr, "mkpkg:", err)
		os.Exit(1)
	}
	for _, p := range []string{res.Deb, res.RPM} {
		if p != "" {
			fmt.Println(p)
		}
	}
}

// sourceDate is SOURCE_DATE_EPOCH when set, else the last commit's time, so
// that two builds of one commit give the same packages.
func sourceDate(repo string) time.Time {
	if s := os.Getenv("SOURCE_DATE_EPOCH"); s != "" {
		if n, err := strconv.ParseInt(s, 10, 64); err == nil {
			return time.Unix(n, 0)
		}
	}
	out, err := exec.Command("git", "-C", repo, "log", "-1", "--format=%ct").Output()
	if err == nil {
		if n, err := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64); err == nil {
			return time.Unix(n, 0)
		}
	}
	return time.Now()
}

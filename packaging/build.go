package packaging

import (
	"bytes"
	"compress/gzip"
	"context"
	"embed"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/goreleaser/nfpm/v2"
	"github.com/goreleaser/nfpm/v2/deb"
	"github.com/goreleaser/nfpm/v2/files"
	"github.com/goreleaser/nfpm/v2/rpm"
)

//go:embed files
var embedded embed.FS

// Identity of the package.
const (
	Name       = "membrane"
	Maintainer = "Membrane maintainers <membrane-fw@users.noreply.github.com>"
	Homepage   = "https://github.com/membrane-fw/membrane"
	License    = "Apache-2.0"
	Summary    = "identity-aware eBPF firewall for container hosts"
	longDesc   = `Membrane gives every container on a Docker, Docker Compose, containerd
or Nomad host a security identity from its labels and enforces L3/L4
policies written in HCL with tc eBPF programs on the containers' veths.
HTTP rules go to a transparent L7 proxy. It is Cilium's idea for hosts
without Kubernetes: a systemd daemon (membraned) and a command line
(membrane) to check, trace and observe policies.`
)

// Formats Build knows.
const (
	FormatDeb = "deb"
	FormatRPM = "rpm"
)

// ErrMissingBinary means bin/ lacks one of the binaries the package holds.
var ErrMissingBinary = errors.New("missing binary")

// Options says what to package and where.
type Options struct {
	// RepoRoot is the checkout: systemd/, docs/, examples/, README.md and
	// LICENSE are read from it.
	RepoRoot string
	// BinDir holds membrane and membraned as `make build` leaves them.
	BinDir string
	// OutDir receives the packages (created if missing).
	OutDir string
	// Version is the raw version (git describe, or `membrane version`);
	// PackageVersion normalises it. Empty: asked from bin/membrane.
	Version string
	// Formats to build; empty means deb and rpm.
	Formats []string
	// MTime stamps every file (reproducible builds); zero means now.
	MTime time.Time
	// Logger reports progress; nil discards it.
	Logger *slog.Logger
}

// Result names the packages Build wrote.
type Result struct {
	Version string
	Deb     string // path, "" when not built
	RPM     string
}

// Build stages the package contents and writes the packages.
func Build(ctx context.Context, opts Options) (Result, error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if opts.MTime.IsZero() {
		opts.MTime = time.Now()
	}
	opts.MTime = opts.MTime.UTC().Truncate(time.Second)
	if len(opts.Formats) == 0 {
		opts.Formats = []string{FormatDeb, FormatRPM}
	}
	cli := filepath.Join(opts.BinDir, "membrane")
	daemon := filepath.Join(opts.BinDir, "membraned")
	for _, b := range []string{cli, daemon} {
		st, err := os.Stat(b)
		if err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
			return Result{}, fmt.Errorf("%w: %s is not an executable; run `make build` first (it builds ./cmd/membrane and ./cmd/membraned)", ErrMissingBinary, b)
		}
	}
	raw := opts.Version
	if raw == "" {
		out, err := exec.CommandContext(ctx, cli, "version").Output()
		if err != nil {
			return Result{}, fmt.Errorf("asking %s for its version: %w", cli, err)
		}
		f := strings.Fields(string(out))
		if len(f) == 0 {
			return Result{}, fmt.Errorf("%s version printed nothing", cli)
		}
		raw = f[len(f)-1]
	}
	version, err := PackageVersion(raw)
	if err != nil {
		return Result{}, err
	}
	res := Result{Version: version}
	log.Info("packaging", "version", version, "formats", opts.Formats)

	stage, err := os.MkdirTemp("", "membrane-package-")
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(stage)
	st := &stager{root: stage, mtime: opts.MTime}
	if err := st.populate(ctx, opts, cli, daemon, version); err != nil {
		return res, err
	}
	if err := os.MkdirAll(opts.OutDir, 0o755); err != nil {
		return res, err
	}
	for _, format := range opts.Formats {
		var path string
		switch format {
		case FormatDeb:
			path = filepath.Join(opts.OutDir, fmt.Sprintf("%s_%s_amd64.deb", Name, version))
			res.Deb = path
		case FormatRPM:
			path = filepath.Join(opts.OutDir, fmt.Sprintf("%s-%s.x86_64.rpm", Name, version))
			res.RPM = path
		default:
			return res, fmt.Errorf("unknown package format %q: use %q or %q", format, FormatDeb, FormatRPM)
		}
		if err := writePackage(format, st.info(format, version), path); err != nil {
			return res, fmt.Errorf("building %s: %w", filepath.Base(path), err)
		}
		log.Info("wrote package", "path", path)
	}
	return res, nil
}

func writePackage(format string, info *nfpm.Info, path string) error {
	var p nfpm.Packager = deb.Default
	if format == FormatRPM {
		p = rpm.DefaultRPM
	}
	tmp := path + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	if err := p.Package(nfpm.WithDefaults(info), f); err != nil {
		f.Close()
		os.Remove(tmp)
		return err
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, path)
}

// stager writes the package tree into root. Each entry records its
// destination, type and the formats it belongs to.
type stager struct {
	root  string
	mtime time.Time
	// glibc is the newest GLIBC symbol version a dynamically linked binary
	// needs ("" when both are static).
	glibc   string
	entries []entry
	scripts map[string]map[string]string // format -> script kind -> staged path
}

type entry struct {
	src, dst, typ string
	mode          os.FileMode
	only          string // "", FormatDeb or FormatRPM
}

func (s *stager) add(dst string, data []byte, mode os.FileMode, typ, only string) error {
	src := filepath.Join(s.root, "tree", only, dst)
	if err := os.MkdirAll(filepath.Dir(src), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(src, data, mode); err != nil {
		return err
	}
	if err := os.Chtimes(src, s.mtime, s.mtime); err != nil {
		return err
	}
	s.entries = append(s.entries, entry{src: src, dst: dst, typ: typ, mode: mode, only: only})
	return nil
}

func (s *stager) dir(dst string, mode os.FileMode) {
	s.entries = append(s.entries, entry{dst: dst, typ: files.TypeDir, mode: mode})
}

func gz(data []byte) []byte {
	var b bytes.Buffer
	// BestCompression, and no name or time in the header: lintian wants
	// maximal compression, reproducible builds want no timestamp.
	w, _ := gzip.NewWriterLevel(&b, gzip.BestCompression)
	w.Write(data)
	w.Close()
	return b.Bytes()
}

func (s *stager) populate(ctx context.Context, opts Options, cli, daemon, version string) error {
	var staticOverrides []string
	// Binaries, stripped: the symbols are not needed to run and would make
	// the package three times as large (lintian: unstripped-binary-or-object).
	for _, b := range []struct{ src, dst string }{{cli, "/usr/bin/membrane"}, {daemon, "/usr/sbin/membraned"}} {
		data, err := stripped(ctx, b.src)
		if err != nil {
			return err
		}
		if err := s.add(b.dst, data, 0o755, "", ""); err != nil {
			return err
		}
		static, glibc, err := libcRequirement(b.src)
		if err != nil {
			return err
		}
		s.glibc = newerGlibc(s.glibc, glibc)
		if static {
			// A statically linked Go binary is intended (no cgo), not the
			// bug lintian's tag is about.
			staticOverrides = append(staticOverrides, "membrane: statically-linked-binary ["+strings.TrimPrefix(b.dst, "/")+"]")
		}
	}
	if len(staticOverrides) > 0 {
		if err := s.add("/usr/share/lintian/overrides/membrane", []byte(strings.Join(staticOverrides, "\n")+"\n"), 0o644, "", FormatDeb); err != nil {
			return err
		}
	}

	// systemd unit: Debian 12 keeps units in /lib, RPM distributions in /usr/lib.
	unit, err := os.ReadFile(filepath.Join(opts.RepoRoot, "systemd", "membraned.service"))
	if err != nil {
		return fmt.Errorf("reading the systemd unit: %w", err)
	}
	if err := s.add("/lib/systemd/system/membraned.service", unit, 0o644, "", FormatDeb); err != nil {
		return err
	}
	if err := s.add("/usr/lib/systemd/system/membraned.service", unit, 0o644, "", FormatRPM); err != nil {
		return err
	}
	// The unit that runs Envoy when membraned's config names it
	// (l7 { envoy_unit = "membrane-envoy.service" }); membraned starts and
	// stops it, so it is installed and not enabled.
	envoyUnit, err := os.ReadFile(filepath.Join(opts.RepoRoot, "proxy", "envoy", "membrane-envoy.service"))
	if err != nil {
		return fmt.Errorf("reading the Envoy unit: %w", err)
	}
	if err := s.add("/lib/systemd/system/membrane-envoy.service", envoyUnit, 0o644, "", FormatDeb); err != nil {
		return err
	}
	if err := s.add("/usr/lib/systemd/system/membrane-envoy.service", envoyUnit, 0o644, "", FormatRPM); err != nil {
		return err
	}

	// Configuration: conffiles, so dpkg and rpm keep local edits.
	for _, c := range []struct{ src, dst string }{
		{"files/membrane.hcl", "/etc/membrane/membrane.hcl"},
		{"files/policies.d/example.hcl", "/etc/membrane/policies.d/example.hcl"},
	} {
		data, err := embedded.ReadFile(c.src)
		if err != nil {
			return err
		}
		if err := s.add(c.dst, data, 0o644, files.TypeConfigNoReplace, ""); err != nil {
			return err
		}
	}
	s.dir("/etc/membrane", 0o755)
	s.dir("/etc/membrane/policies.d", 0o755)

	// Man pages.
	date := s.mtime
	pages, err := CLIManPages(ctx, cli, version, date)
	if err != nil {
		return fmt.Errorf("man pages from the CLI: %w", err)
	}
	dpage, err := DaemonManPage(ctx, daemon, version, date)
	if err != nil {
		return fmt.Errorf("membraned(8): %w", err)
	}
	pages = append(pages, dpage)
	policyMD, err := os.ReadFile(filepath.Join(opts.RepoRoot, "docs", "policy.md"))
	if err != nil {
		return fmt.Errorf("membrane-policy(5) is generated from docs/policy.md: %w", err)
	}
	pages = append(pages, MarkdownManPage("membrane-policy", 5, string(policyMD), version, date, "Membrane's policy language"))
	for _, p := range pages {
		dst := fmt.Sprintf("/usr/share/man/man%d/%s.gz", p.Section, p.Name)
		if err := s.add(dst, gz([]byte(p.Roff)), 0o644, "", ""); err != nil {
			return err
		}
	}

	// Shell completions, from the CLI itself.
	for _, c := range []struct{ shell, dst, only string }{
		{"bash", "/usr/share/bash-completion/completions/membrane", ""},
		{"zsh", "/usr/share/zsh/vendor-completions/_membrane", FormatDeb},
		{"zsh", "/usr/share/zsh/site-functions/_membrane", FormatRPM},
		{"fish", "/usr/share/fish/vendor_completions.d/membrane.fish", ""},
	} {
		out, err := exec.CommandContext(ctx, cli, "completion", c.shell).Output()
		if err != nil || len(out) == 0 {
			return fmt.Errorf("`membrane completion %s` failed (%v): the CLI must keep cobra's completion command", c.shell, err)
		}
		if err := s.add(c.dst, out, 0o644, "", c.only); err != nil {
			return err
		}
	}

	// Documentation.
	const doc = "/usr/share/doc/membrane"
	readme, err := os.ReadFile(filepath.Join(opts.RepoRoot, "README.md"))
	if err != nil {
		return err
	}
	if err := s.add(doc+"/README.md", readme, 0o644, "", ""); err != nil {
		return err
	}
	license, err := os.ReadFile(filepath.Join(opts.RepoRoot, "LICENSE"))
	if err != nil {
		return fmt.Errorf("reading LICENSE: %w", err)
	}
	if err := s.add(doc+"/copyright", debianCopyright(s.mtime), 0o644, "", FormatDeb); err != nil {
		return err
	}
	if err := s.add(doc+"/LICENSE", license, 0o644, files.TypeRPMLicense, FormatRPM); err != nil {
		return err
	}
	if err := s.add(doc+"/changelog.gz", gz(debianChangelog(version, s.mtime)), 0o644, "", FormatDeb); err != nil {
		return err
	}
	for _, d := range []string{"operations.md", "policy.md", "architecture.md"} {
		data, err := os.ReadFile(filepath.Join(opts.RepoRoot, "docs", d))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		} else if err != nil {
			return err
		}
		if err := s.add(doc+"/"+d, data, 0o644, "", ""); err != nil {
			return err
		}
	}
	if err := s.addExamples(filepath.Join(opts.RepoRoot, "examples"), doc+"/examples"); err != nil {
		return err
	}

	// Maintainer scripts.
	s.scripts = map[string]map[string]string{FormatDeb: {}, FormatRPM: {}}
	for format, names := range map[string][]string{
		FormatDeb: {"postinst", "prerm", "postrm"},
		FormatRPM: {"pre", "post", "preun", "postun"},
	} {
		for _, n := range names {
			data, err := embedded.ReadFile("files/scripts/" + format + "/" + n)
			if err != nil {
				return err
			}
			p := filepath.Join(s.root, "scripts", format, n)
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				return err
			}
			if err := os.WriteFile(p, data, 0o755); err != nil {
				return err
			}
			s.scripts[format][n] = p
		}
	}
	return nil
}

// addExamples copies examples/ (deployments and their policies, without
// the tests that check them) into the documentation.
func (s *stager) addExamples(src, dst string) error {
	if _, err := os.Stat(src); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if real, err := filepath.EvalSymlinks(src); err == nil {
		src = real
	}
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		base := d.Name()
		if d.IsDir() {
			if base == "testdata" {
				return filepath.SkipDir
			}
			return nil
		}
		if strings.HasSuffix(base, ".go") || strings.HasPrefix(base, ".") {
			return nil
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return s.add(dst+"/"+filepath.ToSlash(rel), data, 0o644, "", "")
	})
}

func (s *stager) info(format, version string) *nfpm.Info {
	var contents files.Contents
	sort.SliceStable(s.entries, func(i, j int) bool { return s.entries[i].dst < s.entries[j].dst })
	for _, e := range s.entries {
		if e.only != "" && e.only != format {
			continue
		}
		typ := e.typ
		if typ == files.TypeRPMLicense && format != FormatRPM {
			typ = ""
		}
		contents = append(contents, &files.Content{
			Source:      e.src,
			Destination: e.dst,
			Type:        typ,
			FileInfo:    &files.ContentFileInfo{Owner: "root", Group: "root", Mode: e.mode, MTime: s.mtime},
		})
	}
	info := &nfpm.Info{
		Name:            Name,
		Arch:            "amd64",
		Platform:        "linux",
		Version:         version,
		VersionSchema:   "none",
		Section:         "net",
		Priority:        "optional",
		Maintainer:      Maintainer,
		Description:     Summary + "\n" + longDesc,
		Vendor:          "Membrane",
		Homepage:        Homepage,
		License:         License,
		DisableGlobbing: true,
		MTime:           s.mtime,
	}
	info.Contents = contents
	sc := s.scripts[format]
	switch format {
	case FormatDeb:
		// deb-systemd-helper and deb-systemd-invoke; groupadd (passwd) is
		// essential on Debian.
		// nftables: the L7 proxy path runs nft(8) for its notrack table
		// (bpf.PrepareProxyPath).
		info.Depends = []string{"init-system-helpers (>= 1.54~)", "nftables"}
		if s.glibc != "" {
			info.Depends = append(info.Depends, "libc6 (>= "+s.glibc+")")
		}
		info.Recommends = []string{"docker.io | containerd"}
		info.Scripts = nfpm.Scripts{PostInstall: sc["postinst"], PreRemove: sc["prerm"], PostRemove: sc["postrm"]}
	case FormatRPM:
		info.Release = "1"
		info.Depends = []string{"systemd", "shadow-utils", "nftables"}
		info.RPM.Summary = "Identity-aware eBPF firewall for container hosts"
		info.RPM.Group = "System Environment/Daemons"
		info.Scripts = nfpm.Scripts{PreInstall: sc["pre"], PostInstall: sc["post"], PreRemove: sc["preun"], PostRemove: sc["postun"]}
	}
	return info
}

// stripped returns the binary without symbol tables and debug sections
// (GNU strip where installed, else the file as it is).
func stripped(ctx context.Context, path string) ([]byte, error) {
	strip, err := exec.LookPath("strip")
	if err != nil {
		return os.ReadFile(path)
	}
	tmp, err := os.CreateTemp("", "membrane-strip-")
	if err != nil {
		return nil, err
	}
	tmp.Close()
	defer os.Remove(tmp.Name())
	if out, err := exec.CommandContext(ctx, strip, "--strip-unneeded", "--remove-section=.comment", "--remove-section=.note", "-o", tmp.Name(), path).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("strip %s: %v: %s", path, err, out)
	}
	return os.ReadFile(tmp.Name())
}

func debianCopyright(t time.Time) []byte {
	return []byte(fmt.Sprintf(`Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: membrane
Source: %s

Files: *
Copyright: %d The Membrane authors
License: Apache-2.0

License: Apache-2.0
 Licensed under the Apache License, Version 2.0 (the "License");
 you may not use this file except in compliance with the License.
 You may obtain a copy of the License at
 .
     http://www.apache.org/licenses/LICENSE-2.0
 .
 Unless required by applicable law or agreed to in writing, software
 distributed under the License is distributed on an "AS IS" BASIS,
 WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
 See the License for the specific language governing permissions and
 limitations under the License.
 .
 On Debian systems, the complete text of the Apache License, Version 2.0
 can be found in "/usr/share/common-licenses/Apache-2.0".
`, Homepage, t.Year()))
}

func debianChangelog(version string, t time.Time) []byte {
	return []byte(fmt.Sprintf(`membrane (%s) unstable; urgency=medium

  * Upstream build %s.
    The project's history is its git log:
    %s/commits

 -- %s  %s
`, version, version, Homepage, Maintainer, t.Format("Mon, 02 Jan 2006 15:04:05 -0700")))
}

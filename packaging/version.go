package packaging

import (
	"fmt"
	"regexp"
	"strings"
)

var versionChars = regexp.MustCompile(`^[0-9][A-Za-z0-9.+~]*$`)

// PackageVersion turns a version as `git describe --tags --always --dirty`
// prints it (v1.2.3, v1.2.3-4-gabcdef0, abcdef0-dirty, 0.1.0-dev) into one
// that both dpkg and rpm accept and order sensibly: no leading "v", no "-"
// (dpkg reads it as the revision separator, rpm refuses it), starting with a
// digit. A bare commit id becomes a pre-release of 0.0.0 ("0.0.0~git.abcdef0").
func PackageVersion(v string) (string, error) {
	v = strings.TrimSpace(v)
	v = strings.TrimPrefix(v, "v")
	if v == "" {
		return "", fmt.Errorf("empty version: build with `make build` so the binaries carry one")
	}
	if v[0] < '0' || v[0] > '9' {
		v = "0.0.0~git." + v
	}
	// 1.2.3-4-gabc -> 1.2.3+4.gabc ; 0.1.0-dev -> 0.1.0~dev (a pre-release)
	if i := strings.IndexByte(v, '-'); i >= 0 && !strings.Contains(v, "~") {
		rest := v[i+1:]
		if len(rest) > 0 && rest[0] >= '0' && rest[0] <= '9' {
			v = v[:i] + "+" + rest
		} else {
			v = v[:i] + "~" + rest
		}
	}
	v = strings.ReplaceAll(v, "-", ".")
	if !versionChars.MatchString(v) {
		return "", fmt.Errorf("version %q cannot be a package version: use digits, letters, '.', '+' and '~'", v)
	}
	return v, nil
}

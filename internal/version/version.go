// Package version holds the version string that the build stamps in.
package version

// Version is set at build time with -ldflags -X.
var Version = "0.1.0-dev"

// Package config decodes membraned's configuration file (membrane.hcl) and
// validates it. Parsing follows a staged pipeline: hclparse reads the file,
// gohcl decodes it into schema structs that keep every attribute's range,
// validation checks values and names the place of every error, and the
// result is compiled into the plain Config struct the rest of the daemon
// sees. HCL and cty types never leave this package.
//
// A missing file at the default path means "all defaults"; a missing file
// that was named explicitly is an error. Every error carries FILE:LINE:COL.
package config

package envoy

import "syscall"

// terminate asks Envoy to drain and exit.
const terminate = syscall.SIGTERM

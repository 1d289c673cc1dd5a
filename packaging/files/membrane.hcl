# /etc/membrane/membrane.hcl: membraned's configuration.
#
# Every setting below is shown with its default value, commented out: this
# file changes nothing until you uncomment a line. After editing, apply it
# (a restart keeps the datapath, so enforcement does not stop):
#
#   systemctl restart membraned
#
# Reference: /usr/share/doc/membrane/operations.md ("Configuration").

# Where policies live: every *.hcl file in this directory, loaded as one set.
# policy_dir = "/etc/membrane/policies.d"

# Identity store (numeric identities survive restarts).
# state_dir = "/var/lib/membrane"

# BPF pins: programs, maps and links live here so that enforcement outlives
# the daemon (restarts and upgrades never drop protection).
# bpffs_dir = "/sys/fs/bpf/membrane"

# The local API (HTTP+JSON). Reading needs access to the socket; changes need
# root or membership of api_group.
# api_socket = "/run/membrane/membrane.sock"
# api_group  = "membrane"

# "default": policies decide, default-deny as the policy language says.
# "always":  every endpoint is in default-deny both ways.
# "never":   nothing is enforced (traffic is still observed, and connections
#            tracked, so that enforcing later judges them as connections).
# enforcement = "default"

# Audit mode: drops that policy would cause are let through and reported
# with the verdict "audit". audit_selector limits it to matching endpoints.
# audit          = false
# audit_selector = ""

# Traffic of a container whose labels are not known yet (identity "init"):
# "drop" (no packet passes unjudged) or "allow".
# unknown_endpoint = "drop"

# How programs are attached: "tcx" (kernel >= 6.6), "tc" (clsact + cls_bpf),
# or "auto" (tcx where the kernel has it).
# attach = "auto"

# The bridges whose containers' veths are enforced (interface names or shell
# patterns): Docker's, Compose's, CNI's (Nomad bridge networking) and
# nerdctl's. Containers on other networks are not managed.
# bridges = ["docker0", "br-*", "cni0", "cni-*", "cbr0", "nerdctl*"]

# debug, info, warn or error.
# log_level = "info"

# How long an identity nobody uses is kept before its number is freed (0s-24h).
# identity_grace = "5m"
# Full resync with the runtimes and conntrack garbage collection (1s-1h).
# resync_interval = "1m"
# How long policy-directory changes settle before the set is reloaded (0s-10s).
# policy_debounce = "50ms"

# runtime "docker" {
#   enabled = true
#   socket  = "/var/run/docker.sock"
# }
#
# runtime "containerd" {
#   enabled    = true
#   socket     = "/run/containerd/containerd.sock"
#   namespaces = []          # empty: every namespace
# }

# Which labels are identity-relevant: regular expressions on label keys.
# include brings back keys that the default exclusions (volatile labels such
# as com.docker.compose.config-hash) drop; exclude drops more.
# labels {
#   include = []
#   exclude = []
# }

# BPF map sizes (entries; events is the ring buffer size in bytes; ipcache
# sizes each of its tables, addresses and shorter prefixes).
# maps {
#   endpoints      = 4096
#   ipcache        = 65536
#   policy         = 4096
#   policy_entries = 16384
#   conntrack      = 262144
#   events         = 4194304
# }

# Prometheus metrics; "" disables them. Keep it on loopback unless a
# firewall protects the port.
# metrics {
#   listen = "127.0.0.1:9964"
# }

# Report one new allowed flow in N to `membrane observe` (0: none; N at most
# 1000000; drops and audits are always reported).
# flow_sample = 0

# The L7 proxy for rules with http blocks: "builtin" (in membraned), "envoy"
# (a managed Envoy over xDS) or "auto" (Envoy when `envoy` is on PATH).
# port is its transparent listener; envoy_unit names a systemd unit that runs
# Envoy instead of membraned starting it. max_connections bounds the client
# connections the proxy holds open, max_connections_per_source those from one
# address (built-in engine only); a connection over either is reset. Changes
# need a restart.
# l7 {
#   engine                     = "auto"
#   port                       = 15001
#   envoy_unit                 = ""
#   max_connections            = 16384
#   max_connections_per_source = 4096
# }

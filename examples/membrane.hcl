# membraned's configuration (/etc/membrane/membrane.hcl). Every attribute is
# optional; the values below are the defaults unless a comment says otherwise.

policy_dir = "/etc/membrane/policies.d" # *.hcl policy files, reloaded on change
state_dir  = "/var/lib/membrane"        # identity store
bpffs_dir  = "/sys/fs/bpf/membrane"     # pinned maps and links (survive restarts)
api_socket = "/run/membrane/membrane.sock"
api_group  = "membrane" # besides root, members may change things through the API

# default: policies decide. always: every endpoint is default-deny both ways.
# never: nothing is enforced (traffic is still observed, and connections
#        tracked, so that enforcing later judges them as connections).
enforcement = "default"

# audit = true lets every drop through and reports it as "audit";
# audit_selector limits audit mode to the endpoints it selects.
audit          = false
audit_selector = ""

# Traffic of a new veth whose container is not known yet (identity "init").
unknown_endpoint = "drop"

attach    = "auto" # auto | tcx | tc

# Bridges whose container veths are enforced (shell patterns). Containers on
# other networks are not managed. Default: Docker's, Compose's and CNI's.
bridges = ["docker0", "br-*", "cni0", "cni-*", "cbr0", "nerdctl*"]
log_level = "info" # debug | info | warn | error

identity_grace  = "5m"  # unused identities keep their number this long
flow_sample     = 0     # report 1 new allowed flow in N to `membrane observe` (0: none)
resync_interval = "1m"  # full resync and conntrack GC
policy_debounce = "50ms" # policy-directory changes settle this long before a reload

runtime "docker" {
  enabled = true
  socket  = "/var/run/docker.sock"
}

runtime "containerd" {
  enabled    = true
  socket     = "/run/containerd/containerd.sock"
  namespaces = [] # empty: every namespace
}

# Which label keys count for identity (regular expressions on the key).
# By default every label counts except volatile ones (compose hashes, Nomad
# allocation ids, image metadata, container.name).
labels {
  include = []
  exclude = []
}

maps {
  endpoints      = 4096
  ipcache        = 65536
  policy         = 4096
  policy_entries = 16384
  conntrack      = 262144
  events         = 4194304 # ring buffer bytes
}

metrics {
  listen = "127.0.0.1:9964" # "" disables the Prometheus endpoint
}

# The L7 proxy that policies' `http` rules go to. engine: "auto" runs a
# managed Envoy when an `envoy` binary is on PATH, else the built-in Go
# proxy; "builtin" / "envoy" force one. port is the proxy's transparent
# listener (only redirected connections reach it). envoy_unit: a systemd
# unit that runs Envoy instead of a child process (the packages install
# membrane-envoy.service for this; membraned starts and stops it).
# max_connections bounds the client connections the proxy holds open, and
# max_connections_per_source those from one address (built-in engine only);
# a connection over either is reset.
l7 {
  engine                     = "auto"
  port                       = 15001
  envoy_unit                 = ""
  max_connections            = 16384
  max_connections_per_source = 4096
}

# want: 6:22 Unknown entity "remote-node"
# want-detail: "remote-node" is Cilium's: Membrane has no nodes of its own kind; the other hosts of a cluster are in cluster (with their endpoints), this host is host
policy "api" {
  selector = "app=api"
  ingress {
    from_entities = ["remote-node"]
  }
}

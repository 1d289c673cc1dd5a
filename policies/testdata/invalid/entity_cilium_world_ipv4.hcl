# want: 8:20 Unknown entity "world-ipv4"
# want-detail: "world-ipv4" is Cilium's: Membrane's world is both families; for its IPv4 part alone write to_cidr = ["0.0.0.0/0"]
# want: 11:22 Unknown entity "world-ipv6"
# want-detail: for its IPv6 part alone write from_cidr = ["::/0"]
policy "api" {
  selector = "app=api"
  egress {
    to_entities = ["world-ipv4"]
  }
  ingress {
    from_entities = ["world-ipv6"]
  }
}

# The database accepts the backend only, whatever job or namespace the
# caller runs in.
policy "nomad-shop-db" {
  selector = "nomad.job=shop,nomad.group=db"

  ingress {
    from_endpoints = ["nomad.job=shop,nomad.group=backend"]
    ports          = ["5432/tcp"]
  }

  egress_deny {
    to_entities = ["world"]
  }
}

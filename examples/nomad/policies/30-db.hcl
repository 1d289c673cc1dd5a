# The database accepts the backend only: no other job, and not a job named
# shop in another Nomad namespace (every selector here names the namespace).
policy "nomad-shop-db" {
  selector = "nomad.namespace=default,nomad.job=shop,nomad.group=db"

  ingress {
    from_endpoints = ["nomad.namespace=default,nomad.job=shop,nomad.group=backend"]
    ports          = ["5432/tcp"]
  }

  egress_deny {
    to_entities = ["world"]
  }
}

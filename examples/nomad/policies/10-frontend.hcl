# The frontend group (task web) is public on 80 and calls the backend.
policy "nomad-shop-frontend" {
  selector = "nomad.namespace=default,nomad.job=shop,nomad.group=frontend"

  ingress {
    from_entities = ["world", "host"]
    ports         = ["80/tcp"]
  }

  egress {
    to_endpoints = ["nomad.namespace=default,nomad.job=shop,nomad.group=backend"]
    ports        = ["8000/tcp"]
  }
}

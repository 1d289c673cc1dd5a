# Semantics 1: a policy applies to every endpoint its selector matches.
policy "web" {
  selector = "app=web"
  ingress {
    from_endpoints = ["app=frontend"]
    ports          = ["80/tcp"]
  }
}

policy "tiers" {
  selector = "tier in (a, b), !legacy"
  ingress {
    from_endpoints = ["role=admin"]
  }
}

policy "not-db" {
  selector = "app notin (db, cache), app"
  egress_deny {
    to_entities = ["world"]
    ports       = ["25/tcp"]
  }
}

# db: PostgreSQL for the API and the worker, nobody else; it never opens a
# connection to the outside world.
policy "compose-db" {
  description = "db accepts api and worker on 5432"
  selector    = "compose.service=db"

  ingress {
    from_endpoints = ["compose.service=api", "compose.service=worker"]
    ports          = ["5432/tcp"]
  }

  egress_deny {
    to_entities = ["world"]
  }
}

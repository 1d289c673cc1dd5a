policy "db" {
  description = "PostgreSQL: only the API may connect"
  selector    = "app=db"

  ingress {
    from_endpoints = ["app=api"]
    ports          = ["5432/tcp"]
  }

  ingress_deny {
    # even a future allow rule must not expose replication to the frontend
    from_endpoints = ["app=frontend"]
  }
}

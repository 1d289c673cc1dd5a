# worker: a background job runner. It reaches the database and nothing
# else, and accepts no connection at all.
policy "compose-worker" {
  description = "worker only talks to the database"
  selector    = "compose.service=worker"

  egress {
    to_endpoints = ["compose.service=db"]
    ports        = ["5432/tcp"]
  }

  ingress_deny {
    from_entities = ["all"]
  }
}

# api: called by web only; talks to the database only.
policy "compose-api" {
  description = "api serves web on 8000 and uses the database"
  selector    = "compose.service=api"

  ingress {
    from_endpoints = ["compose.service=web"]
    ports          = ["8000/tcp"]
  }

  egress {
    to_endpoints = ["compose.service=db"]
    ports        = ["5432/tcp"]
  }
}

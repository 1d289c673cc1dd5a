# web: the public entry point. Browsers (world) and the host's health checks
# reach it on 80/tcp; it calls only the API.
policy "compose-web" {
  description = "web is public on 80 and calls the API"
  selector    = "compose.service=web"

  ingress {
    from_entities = ["world", "host"]
    ports         = ["80/tcp"]
  }

  egress {
    to_endpoints = ["compose.service=api"]
    ports        = ["8000/tcp"]
  }
}

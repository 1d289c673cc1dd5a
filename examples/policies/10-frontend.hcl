# A three-tier application started with plain `docker run --label app=...`.
policy "frontend" {
  description = "public web tier: reachable from anywhere on 80/443, talks only to the API"
  selector    = "app=frontend"

  ingress {
    from_entities = ["world", "host"]
    ports         = ["80/tcp", "443/tcp"]
  }

  ingress {
    # health checks from the host
    from_entities = ["host"]
    icmp          = ["echo-request"]
    icmpv6        = ["echo-request"]
  }

  egress {
    to_endpoints = ["app=api"]
    ports        = ["8080/tcp"]
  }

  egress {
    # name resolution through the host's resolvers
    to_entities = ["world"]
    ports       = ["53"]
  }
}

# Semantics 5: sender's egress AND receiver's ingress.
policy "client" {
  selector = "app=client"
  egress {
    to_endpoints = ["app=server"]
    ports        = ["443/tcp"]
  }
}

policy "server" {
  selector = "app=server"
  ingress {
    from_endpoints = ["app=client"]
    ports          = ["443/tcp", "8443/tcp"]
  }
}

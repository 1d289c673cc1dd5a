# want: 9:9 Headers "X-Tenant" and "x_tenant" are one field to many servers
policy "api" {
  selector = "app=api"
  ingress {
    ports = ["80/tcp"]
    http {
      headers = {
        "X-Tenant" = "a"
        "x_tenant" = "b"
      }
    }
  }
}

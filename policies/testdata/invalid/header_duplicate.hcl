# want: 9:9 Header "X-Tenant" given twice
policy "api" {
  selector = "app=api"
  ingress {
    ports = ["80/tcp"]
    http {
      headers = {
        "X-Tenant" = "a"
        "x-tenant" = "b"
      }
    }
  }
}

# want: 9:9 Invalid header name "X Tenant"
policy "api" {
  selector = "app=api"
  ingress {
    ports = ["80/tcp"]
    http {
      headers = {
        "X-Ok" = "1"
        "X Tenant" = "acme"
      }
    }
  }
}

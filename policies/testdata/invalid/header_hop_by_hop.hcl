# want: 8:9 "Connection" is a hop-by-hop field
policy "api" {
  selector = "app=api"
  ingress {
    ports = ["80/tcp"]
    http {
      headers = {
        "connection" = "keep-alive"
      }
    }
  }
}

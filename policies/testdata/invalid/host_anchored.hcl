# want: 7:14 Anchor in a host pattern
policy "api" {
  selector = "app=api"
  ingress {
    ports = ["80/tcp"]
    http {
      host = "^api\\.example\\.com$"
    }
  }
}

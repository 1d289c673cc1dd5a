# want: 7:19 "Host" is not a header rule
policy "api" {
  selector = "app=api"
  ingress {
    ports = ["80/tcp"]
    http {
      headers = { host = "api.example.com" }
    }
  }
}

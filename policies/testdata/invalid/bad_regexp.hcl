# want: 7:14 Invalid regular expression in path
policy "api" {
  selector = "app=api"
  ingress {
    ports = ["80/tcp"]
    http {
      path = "/api/(v1"
    }
  }
}

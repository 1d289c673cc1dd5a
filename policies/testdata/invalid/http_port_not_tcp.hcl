# want: 5:24 Port "8080" is not TCP-only, but the rule has http blocks
policy "api" {
  selector = "app=api"
  ingress {
    ports = ["80/tcp", "8080"]
    http {
      method = "GET"
    }
  }
}

# want: 6:5 http needs TCP ports in its rule
policy "api" {
  selector = "app=api"
  ingress {
    from_endpoints = ["app=web"]
    http {
      path = "/.*"
    }
  }
}

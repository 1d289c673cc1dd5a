# want: 5:5 to_endpoints is not allowed in an ingress block; use from_endpoints
policy "api" {
  selector = "app=api"
  ingress {
    to_endpoints = ["app=db"]
  }
}

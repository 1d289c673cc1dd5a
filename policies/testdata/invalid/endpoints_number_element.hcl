# want: 5:34 from_endpoints elements must be strings, not a number
policy "api" {
  selector = "app=api"
  ingress {
    from_endpoints = ["app=web", 42]
  }
}

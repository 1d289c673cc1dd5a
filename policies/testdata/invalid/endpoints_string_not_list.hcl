# want: 5:22 from_endpoints must be a list of strings, not a string
policy "api" {
  selector = "app=api"
  ingress {
    from_endpoints = "app=web"
  }
}

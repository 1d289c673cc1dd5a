# want: 5:51 Invalid selector in from_endpoints: unexpected "y" in value list
policy "api" {
  selector = "app=api"
  ingress {
    from_endpoints = ["app=frontend", "tier in (x y)"]
  }
}

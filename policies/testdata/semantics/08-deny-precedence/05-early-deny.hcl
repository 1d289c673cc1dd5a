policy "deny-admin" {
  selector = "app=web"
  ingress_deny {
    from_endpoints = ["role=intruder"]
  }
}

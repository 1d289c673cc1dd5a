# want: 6:5 http is not allowed in ingress_deny
policy "api" {
  selector = "app=api"
  ingress_deny {
    ports = ["80/tcp"]
    http {
      path = "/admin/.*"
    }
  }
}

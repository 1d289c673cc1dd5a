policy "deny-ssh" {
  selector = ""
  ingress_deny {
    ports = ["22/tcp"]
  }
  egress_deny {
    to_cidr = ["10.0.0.0/8"]
  }
}

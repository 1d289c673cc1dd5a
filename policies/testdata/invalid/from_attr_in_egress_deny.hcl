# want: 5:5 from_cidr is not allowed in an egress_deny block; use to_cidr
policy "api" {
  selector = "app=api"
  egress_deny {
    from_cidr = ["10.0.0.0/8"]
  }
}

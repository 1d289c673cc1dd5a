# Semantics 3: default deny per direction.
policy "dd-off" {
  selector     = "app=a"
  default_deny = false
  ingress {
    from_endpoints = ["role=x"]
    ports          = ["80/tcp"]
  }
}

policy "deny-only" {
  selector = "app=b"
  ingress_deny {
    from_entities = ["world"]
  }
}

policy "egress-only" {
  selector = "app=c"
  egress {
    to_entities = ["host"]
  }
}

policy "mixed" {
  selector = "app=d"
  ingress {
    from_endpoints = ["role=x"]
  }
}

policy "mixed-off" {
  selector     = "app=d"
  default_deny = false
  ingress {
    from_endpoints = ["role=y"]
  }
}

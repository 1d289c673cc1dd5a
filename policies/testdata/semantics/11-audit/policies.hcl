# Semantics 8: audit.
policy "lock" {
  selector = "app=a"
  ingress {
    from_entities = ["host"]
  }
  egress_deny {
    to_entities = ["world"]
  }
  egress_deny {
    to_endpoints = ["app=b"]
    ports        = ["25/tcp"]
  }
}

policy "lockb" {
  selector = "app=b"
  ingress {
    from_entities = ["host"]
  }
}

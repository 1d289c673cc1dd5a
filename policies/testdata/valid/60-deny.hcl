policy "deny" {
  description  = "deny blocks alone never switch default-deny on"
  selector     = "tier=untrusted"
  default_deny = false

  ingress_deny {
    from_entities = ["world"]
    ports         = ["22/tcp"]
  }
  egress_deny {
    to_endpoints = ["app=db"]
  }
  egress_deny {
    to_cidr = ["10.0.0.0/8"]
    except  = ["10.1.0.0/16"]
    icmp    = ["echo-request"]
  }
}

# The example of the policy language specification, complete.
policy "api" {
  description = "frontend may call the API"
  selector    = "app=api"
  default_deny = true

  ingress {
    from_endpoints = ["app=frontend", "role=admin"]
    from_cidr      = ["10.0.0.0/8", "2001:db8::/32"]
    except         = ["10.9.0.0/16"]
    from_entities  = ["host"]
    ports          = ["8080/tcp", "9000-9100/udp", "53"]
    icmp           = ["echo-request", "3"]
    icmpv6         = ["echo-request", "135"]
  }

  ingress {
    from_endpoints = ["app=frontend"]
    ports          = ["8080/tcp"]

    http {
      method  = "GET|HEAD"
      path    = "/api/v[0-9]+/.*"
      host    = "api\\.example\\.com"
      headers = { "X-Tenant" = "acme" }
    }
  }

  egress {
    to_endpoints = ["app=db"]
    to_cidr      = ["0.0.0.0/0"]
    except       = ["169.254.169.254/32"]
    to_entities  = ["world"]
    ports        = ["5432/tcp"]
  }

  ingress_deny {
    from_cidr = ["10.66.0.0/16"]
  }

  egress_deny {
    to_cidr = ["169.254.169.254/32"]
  }
}

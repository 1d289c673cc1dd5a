# Semantics 7: L7.
policy "api" {
  selector = "app=api"
  ingress {
    from_endpoints = ["app=web"]
    ports          = ["8080/tcp"]
    http {
      method = "GET|HEAD"
      path   = "/api/v[0-9]+/.*"
    }
    http {
      method  = "POST"
      path    = "/submit"
      headers = { "X-Tenant" = "acme" }
    }
    http {
      host    = "admin\\.example\\.com"
      headers = { "X-Token" = "" }
    }
  }
  ingress {
    from_endpoints = ["app=ops"]
    ports          = ["8080/tcp"]
  }
  ingress {
    from_endpoints = ["app=ops", "app=mon"]
    ports          = ["8080/tcp"]
    http {
      path = "/metrics"
    }
  }
  ingress {
    from_entities = ["host"]
    ports         = ["9090/tcp"]
    http {
      method = "GET"
    }
  }
}

policy "open" {
  selector     = "app=open"
  default_deny = false
  ingress {
    from_endpoints = ["app=web"]
    ports          = ["80/tcp"]
    http {
      path = "/public/.*"
    }
  }
}

policy "web-out" {
  selector = "app=web"
  egress {
    to_endpoints = ["app=open"]
    ports        = ["80/tcp"]
    http {
      method = "GET"
    }
  }
  egress {
    to_entities = ["all"]
    ports       = ["8080/tcp"]
  }
}

policy "api" {
  description = "the API accepts read calls and order creation from the frontend only"
  selector    = "app=api"

  ingress {
    from_endpoints = ["app=frontend"]
    ports          = ["8080/tcp"]

    http {
      method = "GET|HEAD"
      path   = "/api/v[0-9]+/(products|orders)(/.*)?"
    }
    http {
      method  = "POST"
      path    = "/api/v[0-9]+/orders"
      headers = { "Content-Type" = "application/json" }
    }
  }

  ingress {
    # operators may call the admin endpoints from the host
    from_entities = ["host"]
    ports         = ["8080/tcp"]
  }

  egress {
    to_endpoints = ["app=db"]
    ports        = ["5432/tcp"]
  }

  egress {
    # the payment provider, and nothing else on the internet
    to_cidr = ["203.0.113.0/24"]
    ports   = ["443/tcp"]
  }
}

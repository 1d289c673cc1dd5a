# Several http blocks: any may match. Header names are canonicalised.
policy "http" {
  selector = "app=shop"
  ingress {
    from_endpoints = ["app=frontend"]
    ports          = ["80/tcp", "8000-8100/tcp"]
    http {
      method = "GET"
      path   = "/products(/.*)?"
    }
    http {
      method  = "POST"
      path    = "/cart"
      headers = {
        x-session = ""
        "Content-Type" = "application/json"
        X-Version = 2
      }
    }
    http {}
  }
  egress {
    to_cidr = ["203.0.113.0/24"]
    ports   = ["443/tcp"]
    http {
      host = "api\\.payments\\.example"
    }
  }
}

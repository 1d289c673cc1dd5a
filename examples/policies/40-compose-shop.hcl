# The same pattern for a Docker Compose project named "shop": Membrane derives
# compose.project and compose.service from Compose's own labels, so no
# labels need to be added to the compose file.
policy "shop-web" {
  selector = "compose.project=shop, compose.service=web"

  ingress {
    from_entities = ["world"]
    ports         = ["8000/tcp"]
  }
  egress {
    to_endpoints = ["compose.project=shop, compose.service in (cart, catalog)"]
    ports        = ["9000-9001/tcp"]
  }
}

policy "shop-backends" {
  selector = "compose.project=shop, compose.service in (cart, catalog)"

  ingress {
    from_endpoints = ["compose.project=shop, compose.service=web"]
    ports          = ["9000-9001/tcp"]
  }
  egress {
    to_endpoints = ["compose.project=shop, compose.service=redis"]
    ports        = ["6379/tcp"]
  }
}

policy "shop-redis" {
  selector = "compose.project=shop, compose.service=redis"

  ingress {
    from_endpoints = ["compose.project=shop, compose.service in (cart, catalog)"]
    ports          = ["6379/tcp"]
  }
}

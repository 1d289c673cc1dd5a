# The backend group (the api task and its log-shipper sidecar share one
# network namespace, so they are one endpoint) serves the frontend and uses
# the database.
policy "nomad-shop-backend" {
  selector = "nomad.namespace=default,nomad.job=shop,nomad.group=backend"

  ingress {
    from_endpoints = ["nomad.namespace=default,nomad.job=shop,nomad.group=frontend"]
    ports          = ["8000/tcp"]
  }

  egress {
    to_endpoints = ["nomad.namespace=default,nomad.job=shop,nomad.group=db"]
    ports        = ["5432/tcp"]
  }
}

# The shop as a Nomad job: three groups, each an allocation with its own
# network namespace (bridge networking). Nomad's docker driver labels every
# container with the job, group and task when the client's plugin config asks
# for it (client.nomad.hcl beside this file); Membrane derives nomad.job,
# nomad.group, nomad.task and nomad.namespace from those labels, and the
# policies in policies/ select on them.
job "shop" {
  datacenters = ["dc1"]
  type        = "service"

  group "frontend" {
    network {
      mode = "bridge"
      port "http" {
        static = 8080
        to     = 80
      }
    }

    task "web" {
      driver = "docker"
      config {
        image = "nginx:1.27-alpine"
        ports = ["http"]
      }
    }
  }

  group "backend" {
    network {
      mode = "bridge"
    }

    task "api" {
      driver = "docker"
      config {
        image = "ghcr.io/example/shop-api:1.0"
      }
      env {
        LISTEN = ":8000"
      }
    }

    # A sidecar in the same allocation shares the API's network namespace:
    # for Membrane both are one endpoint (the group).
    task "log-shipper" {
      driver = "docker"
      lifecycle {
        hook    = "poststart"
        sidecar = true
      }
      config {
        image = "ghcr.io/example/log-shipper:1.0"
      }
    }
  }

  group "db" {
    network {
      mode = "bridge"
    }

    task "postgres" {
      driver = "docker"
      config {
        image = "postgres:16-alpine"
      }
      env {
        POSTGRES_USER     = "shop"
        POSTGRES_PASSWORD = "shop"
      }
    }
  }
}

# /etc/membrane/policies.d/example.hcl: an example that enforces nothing.
#
# Every *.hcl file in this directory is loaded as one set (in lexical order
# of file name); if any file has an error the whole set is rejected and the
# previous set stays in force. Check before you save:
#
#   membrane policy check /etc/membrane/policies.d
#
# Uncomment and adapt the policies below, or write your own in new files.
# The language: membrane-policy(5); examples for Docker Compose and Nomad:
# /usr/share/doc/membrane/examples/.
#
# Nothing is enforced until a policy selects a container: a container that
# no policy selects talks to everyone, as without Membrane.

# The API (containers labelled app=api) accepts connections on 8080/tcp only
# from the frontend, and from the host for health checks. Selecting it with
# an ingress block switches it to default-deny for incoming traffic.
#
# policy "api" {
#   description = "frontend may call the API"
#   selector    = "app=api"
#
#   ingress {
#     from_endpoints = ["app=frontend"]
#     ports          = ["8080/tcp"]
#   }
#
#   ingress {
#     from_entities = ["host"]
#     ports         = ["8080/tcp"]
#   }
#
#   # Only the frontend's read requests, everything else getting 403: use
#   # this block INSTEAD of the first one. Beside a rule without http that
#   # admits the same connection, its http rules restrict nothing.
#   # ingress {
#   #   from_endpoints = ["app=frontend"]
#   #   ports          = ["8080/tcp"]
#   #   http {
#   #     method = "GET|HEAD"
#   #     path   = "/api/v[0-9]+/.*"
#   #   }
#   # }
#
#   egress {
#     to_endpoints = ["app=db"]
#     ports        = ["5432/tcp"]
#   }
#
#   egress {
#     to_entities = ["world"]
#     ports       = ["53", "443/tcp"]
#   }
# }

# No container may reach the cloud metadata service, whatever else allows.
# Deny blocks never switch default-deny on by themselves.
#
# policy "no-metadata" {
#   selector = ""
#
#   egress_deny {
#     to_cidr = ["169.254.169.254/32"]
#   }
# }

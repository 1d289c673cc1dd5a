# The example block of the policy language specification, as written there
# (less its "ingress_deny { ... }" and "egress_deny { ... }" placeholders).
policy "api" {                       # name: unique across the whole directory, [a-z0-9][a-z0-9._-]{0,62}
  description = "frontend may call the API"   # optional
  selector    = "app=api"            # required; "" selects every managed endpoint
  default_deny = true                # optional, default true; see "Default deny"

  ingress {                          # allow rule for traffic INTO the selected endpoints; repeatable
    from_endpoints = ["app=frontend", "role=admin"]   # any of these selectors
    from_cidr      = ["10.0.0.0/8", "2001:db8::/32"]  # IPv4 and IPv6 prefixes
    except         = ["10.9.0.0/16"]                   # carved out of from_cidr; only with from_cidr
    from_entities  = ["host"]                          # see "Entities"
    ports          = ["8080/tcp", "9000-9100/udp", "53"]   # see "Ports"
    icmp           = ["echo-request", "3"]             # ICMPv4 types by name or number
    icmpv6         = ["echo-request", "135"]           # ICMPv6 types by name or number

    http {                           # optional L7 rule; repeatable; any block may match
      method  = "GET|HEAD"           # RE2, anchored (^...$), default: any
      path    = "/api/v[0-9]+/.*"    # RE2, anchored, default: any
      host    = "api\\.example\\.com" # RE2, anchored, default: any
      headers = { "X-Tenant" = "acme" }   # exact value; "" means "present with any value"
    }
  }

  egress {                           # allow rule for traffic OUT OF the selected endpoints
    to_endpoints = ["app=db"]
    to_cidr      = ["0.0.0.0/0"]
    except       = ["169.254.169.254/32"]
    to_entities  = ["world"]
    ports        = ["5432/tcp"]
  }

}

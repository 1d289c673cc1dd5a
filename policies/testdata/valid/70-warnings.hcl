# warn: 7:3 This ingress block can never match: its peer attributes are empty lists
# warn: 12:3 This egress_deny block can never match: its ports, icmp and icmpv6 are empty lists
# warn: 19:16 except 192.168.0.0/16 is outside every to_cidr of this block
# warn: 25:19 except 10.0.0.0/8 covers all of from_cidr 10.1.0.0/16
policy "warnings" {
  selector = "app=warn"
  ingress {
    from_endpoints = []
    from_cidr      = []
    ports          = ["80/tcp"]
  }
  egress_deny {
    to_entities = ["world"]
    ports       = []
  }
  egress {
    to_cidr = ["10.0.0.0/8"]
    except  = ["10.9.0.0/16",
               "192.168.0.0/16"]
  }
  ingress {
    from_cidr = ["10.1.0.0/16", "172.16.0.0/12"]
    # "except" that swallows a whole CIDR of the block
    except    = [
                  "10.0.0.0/8"]
  }
  # IPv4-mapped prefixes match no peer (decision 27): the deny below
  # would deny nothing. Prefixes that also hold other IPv6 addresses are fine.
  egress_deny {
    to_cidr = ["::ffff:169.254.169.254", "::/0", "::/95", "::fffe:0:0/95"]
  }
  egress {
    to_cidr = ["0.0.0.0/0", "::/0"]
    except  = ["::ffff:10.0.0.0/104", "::FFFF:0:0/96"]
  }
  # An except equal to a CIDR, or covering one while inside another,
  # swallows that CIDR whole: that entry denies nothing.
  egress_deny {
    to_cidr = ["169.254.169.254/32", "0.0.0.0/0", "10.1.0.0/16"]
    except  = ["169.254.169.254", "10.0.0.0/8"]
  }
  # http judges the TCP connections of its rule only: UDP and SCTP on 8080
  # are admitted unjudged (an error when the rule has no TCP port at all).
  ingress {
    ports = ["80/tcp", "8080"]
    http {
      method = "GET"
    }
  }
  # Envoy takes x-envoy-retry-on out of client requests, and the built-in
  # engine drops it too: a rule requiring it never matches.
  ingress {
    ports = ["80/tcp"]
    http {
      headers = { "X-Envoy-Retry-On" = "", "X-Envoy-Decorator-Operation" = "" }
    }
  }
}
# warn: 30:16 CIDR "::ffff:169.254.169.254" is IPv4-mapped: it matches no address
# warn: 34:16 CIDR "::ffff:10.0.0.0/104" is IPv4-mapped: it matches no address
# warn: 34:39 CIDR "::FFFF:0:0/96" is IPv4-mapped: it matches no address
# warn: 40:16 except 169.254.169.254/32 covers all of to_cidr 169.254.169.254/32
# warn: 40:35 except 10.0.0.0/8 covers all of to_cidr 10.1.0.0/16
# warn: 45:24 Port "8080" is not TCP-only: the rule's http blocks judge its TCP connections alone
# warn: 55:19 Header rule on "X-Envoy-Retry-On" can never match

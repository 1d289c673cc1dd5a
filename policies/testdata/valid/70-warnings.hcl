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
}

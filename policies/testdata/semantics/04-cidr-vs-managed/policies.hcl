# CIDR rules, except, IPv6; CIDRs never match managed endpoints nor the host.
policy "cidr" {
  selector = "app=api"
  ingress {
    from_cidr = ["10.0.0.0/8", "2001:db8::/32"]
    except    = ["10.9.0.0/16", "2001:db8:bad::/48"]
    ports     = ["80/tcp"]
  }
}

policy "egress-cidr" {
  selector = "app=api"
  egress {
    to_cidr = ["0.0.0.0/0"]
    except  = ["169.254.169.254/32"]
  }
  egress {
    to_cidr = ["::/0"]
  }
  egress {
    to_endpoints = ["app=db"]
  }
  egress {
    to_entities = ["host"]
  }
}

# warn: 11:37 CIDR "10.1.2.3/8" has host bits set; it means 10.0.0.0/8
# A bare address is a single host; IPv6 works everywhere IPv4 does.
policy "cidr" {
  selector = "app=cidr"
  egress {
    to_cidr = ["192.0.2.10", "2001:db8::1", "2001:db8:1::/48", "0.0.0.0/0", "::/0"]
    except  = ["192.0.2.11/32", "2001:db8:1:2::/64"]
  }
  ingress {
    # host bits are masked off, with a warning
    from_cidr = ["198.51.100.0/24", "10.1.2.3/8"]
  }
}

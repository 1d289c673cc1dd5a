# want: 6:5 Unknown attribute "icmp6" in egress_deny; did you mean "icmp" or "icmpv6"?
# A name as close to two attributes names both: icmp would judge ICMPv4.
policy "api" {
  selector = "app=api"
  egress_deny {
    icmp6 = ["echo-request"]
  }
}

# The L4 condition: ports, ranges, "53" = tcp+udp+sctp, ICMP and ICMPv6
# types, and no L4 attribute = every protocol and port.
policy "ports" {
  selector = "app=srv"
  ingress {
    ports = ["53"]
  }
  ingress {
    ports = ["8000-8099/tcp", "9000/any"]
  }
  ingress {
    ports = ["1-1024/udp"]
  }
  ingress {
    icmp = ["echo-request", "3"]
  }
  ingress {
    icmpv6 = ["echo-request", "135"]
  }
}

policy "open-to-host" {
  selector = "app=open"
  ingress {
    from_entities = ["host"]
  }
}

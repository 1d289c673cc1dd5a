# Every ICMP name of both families, and numbers.
policy "icmp" {
  selector = "app=icmp"
  ingress {
    icmp = ["echo-reply", "destination-unreachable", "redirect", "echo-request",
            "time-exceeded", "parameter-problem", "0", "255", 13]
    icmpv6 = ["destination-unreachable", "packet-too-big", "time-exceeded",
              "parameter-problem", "echo-request", "echo-reply", "router-solicitation",
              "router-advertisement", "neighbor-solicitation", "neighbor-advertisement", "143"]
  }
}

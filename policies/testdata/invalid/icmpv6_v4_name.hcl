# want: 5:15 "redirect" is not an ICMPv6 type name
policy "api" {
  selector = "app=api"
  ingress {
    icmpv6 = ["redirect"]
  }
}

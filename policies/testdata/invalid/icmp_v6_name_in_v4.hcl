# want: 5:13 "packet-too-big" is not an ICMPv4 type name
policy "api" {
  selector = "app=api"
  ingress {
    icmp = ["packet-too-big"]
  }
}

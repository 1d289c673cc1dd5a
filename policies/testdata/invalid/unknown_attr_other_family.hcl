# want: 8:5 Unknown attribute "icmpv4" in ingress; did you mean "icmp"?
# A name that says its ICMP family is not offered the other family's
# attribute, though "icmpv4" is one letter from "icmpv6": written there, the
# rule's types would be judged as ICMPv6 ones.
policy "api" {
  selector = "app=api"
  ingress {
    icmpv4 = ["echo-request"]
  }
}

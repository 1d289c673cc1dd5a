# want: 5:27 Invalid icmp type: unknown ICMPv4 type "echo-requets"; did you mean "echo-request"?
policy "api" {
  selector = "app=api"
  ingress {
    icmp = ["echo-reply", "echo-requets"]
  }
}

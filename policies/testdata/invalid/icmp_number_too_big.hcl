# want: 5:13 Invalid icmp type: ICMP type 256 is out of range 0-255
policy "api" {
  selector = "app=api"
  ingress {
    icmp = ["256"]
  }
}

# want: 5:14 Invalid port "8/icmp": ICMP has no ports
policy "api" {
  selector = "app=api"
  ingress {
    ports = ["8/icmp"]
  }
}

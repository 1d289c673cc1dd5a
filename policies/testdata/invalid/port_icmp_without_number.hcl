# want: 8:14 Invalid port "icmp": ICMP has no ports
# want: 8:22 Invalid port "echo-request": ICMP has no ports
# want: 8:38 Invalid port "tcp/443": the port comes first: write "443/tcp"
# ICMP named alone in ports, by protocol or type, says where ICMP goes.
policy "api" {
  selector = "app=api"
  ingress {
    ports = ["icmp", "echo-request", "tcp/443"]
  }
}

# want: 5:14 Port "53/udp" is not TCP-only
policy "api" {
  selector = "app=api"
  egress {
    ports = ["53/udp"]
    http {}
  }
}

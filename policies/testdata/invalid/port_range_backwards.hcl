# want: 5:14 Invalid port "9100-9000/udp": range 9100-9000 is backwards
policy "api" {
  selector = "app=api"
  ingress {
    ports = ["9100-9000/udp"]
  }
}

# want: 5:24 Invalid port "65536": port 65536 is out of range 1-65535
policy "api" {
  selector = "app=api"
  ingress {
    ports = ["80/tcp", 65536]
  }
}

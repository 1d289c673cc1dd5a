# want: 5:14 Invalid port "0/tcp": port 0 is not allowed
policy "api" {
  selector = "app=api"
  ingress {
    ports = ["0/tcp"]
  }
}

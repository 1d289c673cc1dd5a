# want: 5:14 Invalid port "http": "http" is not a port number
policy "api" {
  selector = "app=api"
  ingress {
    ports = ["http"]
  }
}

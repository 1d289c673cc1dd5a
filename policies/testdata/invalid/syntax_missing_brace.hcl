# want: 2:14 Unclosed configuration block
policy "api" {
  selector = "app=api"
  ingress {
    ports = ["80/tcp"]
  }

# want: 7:16 Empty method pattern
policy "api" {
  selector = "app=api"
  ingress {
    ports = ["80/tcp"]
    http {
      method = ""
    }
  }
}

# want: 7:14 Case-sensitive host pattern
policy "api" {
  selector = "app=api"
  ingress {
    ports = ["80/tcp"]
    http {
      host = "(?-i)API\\.example\\.com"
    }
  }
}

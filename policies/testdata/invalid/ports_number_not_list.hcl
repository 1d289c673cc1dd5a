# want: 5:13 ports must be a list of strings, not a number
policy "api" {
  selector = "app=api"
  ingress {
    ports = 8080
  }
}

# want: 7:7 Unknown attribute "methd" in http; did you mean "method"?
policy "api" {
  selector = "app=api"
  ingress {
    ports = ["80/tcp"]
    http {
      methd = "GET"
    }
  }
}

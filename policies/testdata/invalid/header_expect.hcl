# want: 7:19 "Expect" is not a header rule
policy "api" {
  selector = "app=api"
  ingress {
    ports = ["80/tcp"]
    http {
      headers = { Expect = "100-continue" }
    }
  }
}

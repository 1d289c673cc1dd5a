# want: 5:5 ports is an attribute, not a block
policy "api" {
  selector = "app=api"
  ingress {
    ports {
    }
  }
}

policy "allow-all" {
  selector = "app=web"
  ingress {}
  egress {
    to_entities = ["all"]
  }
}

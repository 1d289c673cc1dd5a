policy "entities" {
  selector = "app=entities"
  ingress {
    from_entities = ["host", "world", "cluster", "init", "all"]
  }
  egress {
    to_entities = ["world"]
    ports       = ["443/tcp"]
  }
}

# want: 5:22 from_entities elements must be strings, not a bool
policy "api" {
  selector = "app=api"
  ingress {
    from_entities = [true]
  }
}

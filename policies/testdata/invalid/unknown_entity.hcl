# want: 5:28 Unknown entity "wrld"; did you mean "world"?
policy "api" {
  selector = "app=api"
  egress {
    to_entities = ["host", "wrld"]
  }
}

# want: 6:5 Unknown attribute "from_entity" in ingress; did you mean "from_entities"?
# want: 9:5 Unknown attribute "to_entity" in egress; did you mean "to_entities"?
policy "api" {
  selector = "app=api"
  ingress {
    from_entity = ["host"]
  }
  egress {
    to_entity = ["world"]
  }
}

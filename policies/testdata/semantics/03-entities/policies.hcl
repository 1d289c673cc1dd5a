# The entities table, and a rule without peer attribute (every peer).
policy "ent" {
  selector = "app=api"
  ingress {
    from_entities = ["host"]
    ports         = ["22/tcp"]
  }
  ingress {
    from_entities = ["world"]
    ports         = ["443/tcp"]
  }
  ingress {
    from_entities = ["cluster"]
    ports         = ["8080/tcp"]
  }
  ingress {
    from_entities = ["init"]
    ports         = ["9000/tcp"]
  }
  ingress {
    from_entities = ["all"]
    ports         = ["53/udp"]
  }
  ingress {
    ports = ["7000/tcp"]
  }
}

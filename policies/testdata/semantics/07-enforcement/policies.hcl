# The daemon's enforcement setting.
policy "p" {
  selector = "app=a"
  ingress {
    from_entities = ["host"]
  }
  ingress_deny {
    from_entities = ["world"]
    ports         = ["22/tcp"]
  }
}

# want: 4:3 Unknown block "ingres" in policy "api"; did you mean "ingress"?
policy "api" {
  selector = "app=api"
  ingres {
    ports = ["80/tcp"]
  }
}

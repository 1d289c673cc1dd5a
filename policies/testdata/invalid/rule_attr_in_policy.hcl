# want: 4:3 Attribute "ports" belongs in a rule block
policy "api" {
  selector = "app=api"
  ports    = ["80/tcp"]
}

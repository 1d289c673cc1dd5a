# want: 4:3 ingress is a block, not an attribute
policy "api" {
  selector = "app=api"
  ingress = {}
}

# want: 5:5 Attribute "selector" belongs in the policy block
policy "api" {
  selector = "app=api"
  ingress {
    selector = "app=web"
  }
}

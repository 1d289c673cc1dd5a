# want: 4:3 Attribute redefined
policy "api" {
  selector = "app=api"
  selector = "app=web"
}

# want: 4:3 http block outside a rule
policy "api" {
  selector = "app=api"
  http {
    path = "/"
  }
}

policy "api" {
  selector = "app=api"
}

# want: 6:8 Duplicate policy "api"
policy "api" {
  selector = "app=api"
}

policy "api" {
  selector = "app=web"
}

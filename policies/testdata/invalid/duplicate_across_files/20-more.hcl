# want: 7:8 Duplicate policy "api"
# want-detail: already declared at
policy "web" {
  selector = "app=web"
}

policy "api" {
  selector = "app=api2"
}

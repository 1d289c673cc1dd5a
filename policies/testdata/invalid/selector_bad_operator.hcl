# want: 3:19 unexpected ">" after key "app"
policy "api" {
  selector = "app > 3"
}

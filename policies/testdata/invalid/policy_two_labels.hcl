# want: 2:14 Extra label on policy block
policy "api" "v2" {
  selector = "app=api"
}

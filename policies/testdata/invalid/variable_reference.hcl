# want: 3:14 Variables not allowed
policy "api" {
  selector = var.api_selector
}

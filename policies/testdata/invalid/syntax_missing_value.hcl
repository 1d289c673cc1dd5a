# want: 3:13 Invalid expression
policy "api" {
  selector =
}

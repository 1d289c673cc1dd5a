# want: 3:14 Function calls not allowed
policy "api" {
  selector = lower("APP=API")
}

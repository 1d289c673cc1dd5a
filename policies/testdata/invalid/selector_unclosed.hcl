# want: 3:22 unclosed '(': missing ')'
policy "api" {
  selector = "app in (a, b"
}

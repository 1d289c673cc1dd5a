# want: 3:23 expected a requirement after ','
policy "api" {
  selector = "app=api,"
}

# want: 2:1 Missing selector in policy "api"
policy "api" {
  description = "no selector"
}

# want: 3:21 Invalid selector in selector: unexpected ":" after value "my"
policy "api" {
  selector = "app=my:app"
}

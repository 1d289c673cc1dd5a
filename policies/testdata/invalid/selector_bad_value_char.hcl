# want: 3:21 Invalid selector: unexpected ":" after value "my"
policy "api" {
  selector = "app=my:app"
}

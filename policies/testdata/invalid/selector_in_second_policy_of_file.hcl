# want: 8:18 Invalid selector: expected a label key after '!'
policy "ok" {
  selector = "app=ok"
}

policy "bad" {
  # "!" alone names no key
  selector = "a,!"
}

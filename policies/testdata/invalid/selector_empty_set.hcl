# want: 3:23 "in" needs at least one value
policy "api" {
  selector = "app in ()"
}

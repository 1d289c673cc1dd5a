# want: 4:18 default_deny must be true or false, not a string
policy "api" {
  selector     = "app=api"
  default_deny = "no"
}

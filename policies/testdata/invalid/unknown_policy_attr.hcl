# want: 4:3 Unknown attribute "selecter" in policy "api"; did you mean "selector"?
# want: 3:1 Missing selector in policy "api"
policy "api" {
  selecter = "app=api"
}

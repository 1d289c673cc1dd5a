# want: 5:5 Unknown attribute "form_endpoints" in ingress; did you mean "from_endpoints"?
policy "api" {
  selector = "app=api"
  ingress {
    form_endpoints = ["app=frontend"]
  }
}

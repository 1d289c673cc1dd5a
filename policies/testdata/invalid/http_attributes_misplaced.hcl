# want: 9:5 Attribute "method" belongs in an http block
# want: 10:5 Attribute "headers" belongs in an http block
# want: 13:7 Attribute "ports" belongs in the rule block around this http block
# want: 14:7 Attribute "from_endpoints" belongs in the rule block around this http block
# want: 20:3 Attribute "path" belongs in an http block
policy "api" {
  selector = "app=api"
  ingress {
    method  = "GET"
    headers = { "X-Tenant" = "acme" }
    ports   = ["80/tcp"]
    http {
      ports          = ["80/tcp"]
      from_endpoints = ["app=web"]
    }
  }
}
policy "web" {
  selector = "app=web"
  path     = "/x"
}

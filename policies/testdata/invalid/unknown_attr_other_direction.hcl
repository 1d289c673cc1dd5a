# want: 9:5 Unknown attribute "from_endpoint" in egress; did you mean "to_endpoints"?
# want: 12:5 Unknown attribute "to_cidrs" in ingress_deny; did you mean "from_cidr"?
# A misspelt peer attribute of the other direction is pointed at the one
# this block takes, as the exact name of the other direction is.
policy "api" {
  selector = "app=api"

  egress {
    from_endpoint = ["app=db"]
  }
  ingress_deny {
    to_cidrs = ["10.0.0.0/8"]
  }
}

# want: 2:1 Unknown block "policies" at the top level of a policy file; did you mean "policy"?
policies "api" {
  selector = "app=api"
}

# want: 2:1 Unknown block "polcy" at the top level of a policy file; did you mean "policy"?
polcy "api" {
  selector = "app=api"
}

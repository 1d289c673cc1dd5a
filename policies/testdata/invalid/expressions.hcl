policy "api" {
  selector = "app=${"api"}"
  description = "port ${8080}"
  ingress {
    ports         = ["80/tcp", 8000 + 80, "${8081}", true ? 80 : 81]
    icmp          = [for t in [8] : t]
    from_entities = ["world", "ho%{ if true }st%{ endif }"]
    http {
      method  = ("GET")
      headers = { "X-A" = "a" == "b" ? "x" : "y", "X-B" = "b" }
    }
  }
}
# Policy files are static data (docs/policy.md, "Files and directories"):
# interpolation, template directives, operators, conditionals, for
# expressions and parentheses are errors at the expression, as variables
# and function calls are.
# want: 2:21 Interpolation not allowed
# want: 3:25 Interpolation not allowed
# want: 5:32 Expressions not allowed
# want: 5:46 Interpolation not allowed
# want: 5:54 Expressions not allowed
# want: 6:21 Expressions not allowed
# want: 7:34 Interpolation not allowed
# want: 9:17 Expressions not allowed
# want: 10:27 Expressions not allowed

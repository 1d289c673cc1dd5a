# want: 2:1 Unknown attribute "selector" at the top level of a policy file
selector = "app=api"

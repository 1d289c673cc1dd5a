# Every selector form of the grammar table.
policy "selectors" {
  selector = "com.docker.compose.service=web, compose.project==shop"

  ingress {
    from_endpoints = [
      "app=frontend",
      "app==frontend",
      "tier!=db",
      "env in (prod, staging)",
      "env notin (dev)",
      "team",
      "!legacy",
      "",
      "k=",
      "  spaced = out ,  other  in ( a ,b ) ",
      "vendor.example/role=edge_node-1",
      "k in (a,)",
    ]
  }
}

policy "select-all" {
  description = "an empty selector selects every managed endpoint"
  selector    = ""
  egress {
    to_entities = ["cluster"]
  }
}

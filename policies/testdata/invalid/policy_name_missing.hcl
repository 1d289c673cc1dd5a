# want: 2:1 Missing policy name
policy {
  selector = "app=api"
}

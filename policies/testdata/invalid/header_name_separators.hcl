# want: 8:9 Header name "a-b-c-d-e-f-g-h-i_j" has more than 8 separators ('-', '_', '.' and other characters than letters and digits)
policy "api" {
  selector = "app=api"
  ingress {
    ports = ["80/tcp"]
    http {
      headers = {
        "a-b-c-d-e-f-g-h-i_j" = ""
      }
    }
  }
}

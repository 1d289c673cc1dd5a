# want: 5:14 Invalid port "80/tpc": unknown protocol "tpc"
policy "api" {
  selector = "app=api"
  ingress {
    ports = ["80/tpc"]
  }
}

# want: 5:34 Invalid CIDR "10.0.0.0/33" in to_cidr
policy "api" {
  selector = "app=api"
  egress {
    to_cidr = ["192.168.0.0/16", "10.0.0.0/33"]
  }
}

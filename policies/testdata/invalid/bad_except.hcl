# want: 6:15 Invalid CIDR "10.1.0.0.0/16" in except
policy "api" {
  selector = "app=api"
  egress {
    to_cidr = ["10.0.0.0/8"]
    except = ["10.1.0.0.0/16"]
  }
}

# want: 6:5 except without to_cidr
policy "api" {
  selector = "app=api"
  egress {
    to_entities = ["world"]
    except      = ["169.254.169.254/32"]
  }
}

policy "allow-ssh" {
  selector = "app=web"
  ingress {
    from_entities = ["all"]
    ports         = ["22/tcp"]
  }
}

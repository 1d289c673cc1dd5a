# want: 5:20 Unknown entity "kube-apiserver"
policy "api" {
  selector = "app=api"
  egress {
    to_entities = ["kube-apiserver"]
  }
}

# want: 6:20 Unknown entity "kube-apiserver"
# want-detail: "kube-apiserver" is Cilium's: there is no Kubernetes API server here; name the peer by its labels (to_endpoints) or its address (to_cidr)
policy "api" {
  selector = "app=api"
  egress {
    to_entities = ["kube-apiserver"]
  }
}

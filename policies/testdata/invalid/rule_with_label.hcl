# want: 4:11 Unexpected label on ingress block
policy "api" {
  selector = "app=api"
  ingress "web" {
    ports = ["80/tcp"]
  }
}

# Every port form.
policy "ports" {
  selector = "app=ports"
  ingress {
    ports = [
      "80/tcp",
      "53/udp",
      "2905/sctp",
      "53/any",
      "53",
      "9000-9100/udp",
      "30000-32767",
      "443/TCP",
      "1-65535/tcp",
      8080,
    ]
  }
}

# Null means absent; heredocs are strings; blocks may be empty.
policy "misc.v2_x-1" {
  description = <<-EOT
    A longer description
    over two lines.
  EOT
  selector = "app=misc"
  default_deny = null
  ingress {}
  egress {
    to_endpoints = null
    ports        = ["53/udp"]
  }
}

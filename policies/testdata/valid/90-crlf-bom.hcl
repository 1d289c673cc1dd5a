# Written on Windows: a byte-order mark and CRLF line endings are fine.
policy "windows-editor" {
  selector = "app=win"
  ingress {
    ports = ["3389/tcp"]
  }
}

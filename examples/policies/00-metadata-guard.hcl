# No container may reach the cloud provider's metadata service, whatever
# other policies allow: deny always wins over allow. A deny block alone does
# not switch default-deny on, so this policy restricts nothing else.
policy "metadata-guard" {
  description = "block instance metadata for every container"
  selector    = ""

  egress_deny {
    to_cidr = ["169.254.169.254/32", "fd00:ec2::254/128"]
  }
}

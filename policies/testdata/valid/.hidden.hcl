policy "IGNORED" { this is not even HCL

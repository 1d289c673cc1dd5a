# Nomad client configuration: the docker driver labels every container it
# starts with these allocation fields (as com.hashicorp.nomad.<field>), which
# Membrane turns into nomad.job, nomad.group, nomad.task and nomad.namespace.
plugin "docker" {
  config {
    extra_labels = ["job_name", "task_group_name", "task_name", "namespace", "node_name"]
  }
}

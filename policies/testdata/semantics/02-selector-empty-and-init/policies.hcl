# selector "" selects every managed endpoint whose labels are known; init
# endpoints are selected by no policy and are matched, as peers, only by the
# init and all entities (and rules without a peer attribute).
policy "everyone" {
  selector = ""
  ingress {
    from_entities = ["cluster"]
  }
}

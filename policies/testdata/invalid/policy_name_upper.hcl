# want: 2:8 Invalid policy name "Api"
policy "Api" {
  selector = "app=api"
}

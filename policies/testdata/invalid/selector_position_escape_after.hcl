# want: 6:20 Invalid selector: unclosed '(': missing ')'
# want: 10:17 Invalid selector: invalid "$" in value of "k"
# An escape sequence after the offending character, or a '$' that is no
# interpolation, does not move the error to the start of the string.
policy "a" {
  selector = "k in (a, b\u0041"
}

policy "b" {
  selector = "k=$x"
}

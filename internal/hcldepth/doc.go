// Package hcldepth bounds how deep an HCL file nests before HCL's parser
// reads it. The parser recurses once per level of brackets, braces,
// parentheses, strings and templates and once per unary operator, and a
// Go stack overflow is fatal, not an error: a few hundred kilobytes of "["
// would kill the program that parses them (policy check, and membraned
// loading its policy directory or its configuration). HCL's lexer does not
// recurse, so Check counts the file's tokens first.
package hcldepth

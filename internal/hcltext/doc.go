// Package hcltext refuses, with one diagnostic, an HCL source that is not
// UTF-8 text: a file saved as UTF-16 (Windows editors' "Unicode"), or a
// binary one (a NUL byte). HCL's parser reads such a file as text anyway
// and reports every other byte as an invalid character, so one policy
// file saved in the wrong encoding buried its cause under a thousand
// errors.
package hcltext

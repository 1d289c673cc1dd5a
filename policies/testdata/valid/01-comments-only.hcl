# A file with only comments is a valid, empty part of the set.
// Both comment styles work,
/* and block comments too. */

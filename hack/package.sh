#!/usr/bin/env bash
echo "make package: packaging is not built yet" >&2
exit 1

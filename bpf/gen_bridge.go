package bpf

//go:generate go tool bpf2go -go-package bpf -output-stem bridge -target bpfel bridge bridge.c -- -I./include -O2 -mcpu=v3 -g -Wall -Werror

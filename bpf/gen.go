package bpf

//go:generate go tool bpf2go -go-package bpf -output-stem datapath -target bpfel -type endpoint_info -type ipcache_key -type ipcache_value -type policy_key -type policy_exact_key -type policy_value -type ct_key -type ct_entry -type frag_key -type frag_value -type config -type counter -type event -type flow_slot datapath datapath.c -- -I./include -O2 -mcpu=v3 -g -Wall -Werror

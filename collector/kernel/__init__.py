"""The collector's kernel side: libbpf, BTF, bpffs pins, ring buffers."""

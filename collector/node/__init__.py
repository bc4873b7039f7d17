"""Facts of the node a connection end needs: its pod (cgroup) and NAT."""

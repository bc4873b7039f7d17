"""Network health per path and the network-at-fault verdict."""

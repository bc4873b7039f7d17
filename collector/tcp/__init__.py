"""TCP connections: the tcpconn programs' events to raw.tcp records."""

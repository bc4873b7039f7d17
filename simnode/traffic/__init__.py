"""Traffic programs that run inside pods: a request/reply TCP server and a client.

``python -m simnode.traffic server --port P --reply-bytes M`` accepts connections forever; each
connection is read until the client half-closes (or ``--request-bytes`` arrived), answered
with exactly M bytes, then closed in order (FIN, no RST).

``python -m simnode.traffic client --host H --port P --count N --send-bytes K`` makes N
sequential connections; each sends exactly K bytes, half-closes, reads the reply to EOF and
closes. It prints one JSON line (``ClientSummary``) and exits non-zero if any failed.
"""

"""`kiln serve` against a hostile or careless client (issue 13): real servers on port 0, the
stock Triton client, plain gRPC channels and raw bytes.

Nothing a client sends may make the server answer INTERNAL, hang, leak how it is built (class
names, file paths, server software), echo unbounded input, write storage named by the client,
drop labels it acknowledged, or let an anonymous client take production down.
"""

"""Serving: the transport-neutral core (model table, dynamic batching, hot swap, traffic hook)
and its transports (`kiln.serving.grpc`; `kiln.serving.bento`)."""

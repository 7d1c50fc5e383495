"""The gRPC transport: KServe v2 `inference.GRPCInferenceService`, `kiln.v1.Feedback`, health
and reflection, over the transport-neutral core. The only package that imports generated code."""

"""Production traffic: Polars schemas, the request logger, feedback and readers."""

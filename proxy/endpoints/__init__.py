"""Request handlers: parse and validate the request, call a service, build a response. Nothing else."""

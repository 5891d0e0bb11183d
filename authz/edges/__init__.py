"""What faces Envoy: the ext_authz gRPC servicer and HTTP server, the CheckRequest adapter,
and the worker processes that share a port."""

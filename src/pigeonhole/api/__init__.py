"""The HTTP API: app factory, dependencies, error shape, middleware. Domain routes live in their packages."""

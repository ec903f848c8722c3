"""The dyno's entrypoint: supervisord (sync, model server, gateway) with logs on stdout."""

"""The MedalS engine server: protocol v1 over HTTP, one warm model, one job at a time.

Modules: `wire` (arrays on the wire), `cache` (uploaded images), `jobs` (the single-worker queue), `errors`
(the server's HTTP errors), `protocol` (request/response schemas and limits), `engine` (requests → pipeline
calls), `app` (the ASGI application), `process` (`medals serve` as a child process), `remote` (the engine behind
a URL, through the torch-free client), `bench` (`medals bench server`). The command is in `medals.cli.serve`.
"""

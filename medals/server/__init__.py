"""The MedalS engine server: protocol v1 over HTTP, one warm model, one GPU job at a time.

Modules: `wire` (arrays on the wire), `cache` (uploaded images), `jobs` (the single-worker queue),
`protocol` (request/response schemas and limits), `engine` (requests → pipeline calls), `app` (the ASGI
application), `process` (start `medals serve` as a child process), `remote` (the engine used through the
torch-free client), `bench` (`medals bench server`).
"""

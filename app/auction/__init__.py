"""One auction: the service (orchestration, record, billing write), the candidate sampler, the
client of the LLM workers, and the `mosaic auction` command.

Imports the mechanism, the prompts, the request/response models (`app.gateway.schemas`), the ledger's
producer and `workers.protocol` (the wire models); never the gateway's app or routes.
"""

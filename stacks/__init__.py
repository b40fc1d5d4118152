"""CDK stacks: one per deployable concern (storage, ingest, warehouse)."""

"""The prediction database: schema, engines and migrations, batched writes, model registry."""

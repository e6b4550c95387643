"""Pipeline stages: each a plain ``run(params, paths) -> dict`` called by the CLI, DVC and kfp alike."""

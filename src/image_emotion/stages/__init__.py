"""Pipeline stages: each a plain ``run(config: Config, paths) -> dict`` called by the CLI, DVC and kfp alike."""

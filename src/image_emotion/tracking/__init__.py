"""MLflow: runs (one parent per pipeline run, nested per stage), the registry, the served pyfunc model."""

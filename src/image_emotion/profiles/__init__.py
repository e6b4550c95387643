"""Named configurations (``<name>.yaml``: dotted keys over the schema's defaults, checked by the same schema)."""

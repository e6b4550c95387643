"""Training on what the stages share: head fitting on cached features and the feature-shard cache."""

"""The paper-table report: this run's figures beside seed 000's published ones (Markdown and HTML)."""

"""Inference as typed functions, shared by the CLI (which only parses and prints) and the served models (the MLflow
pyfuncs of ``tracking/`` wrap the same predictors):

- ``inputs``: files, folders and globs -> image files; decoding, a bad file a failure and not a stop.
- ``models``: one rule for which model answers (``resolve``), the same for every command.
- ``predict`` (seed 000): emotion, confidence, polarity and emotional regions of each image; region overlays.
- ``retrieve`` (seed 002): the images nearest in feeling to each query, in the model's index or a folder.
- ``describe`` (seed 001): each image's label in every emotion model the generative model answers.
- ``tables``: the plain-text tables the CLI prints.
- ``demo``: the three on a web page on loopback (``image-emotion demo``, port ``DEMO_PORT``).
"""

DEMO_PORT = 8765  # image-emotion demo's default port (here: the setup summary names it without importing the server)

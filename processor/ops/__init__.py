"""What operators run: the ``voxline`` command line and the tools behind its verbs."""

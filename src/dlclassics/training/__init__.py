"""Training procedures that more than one experiment uses, so that no experiment imports another.

Each module holds one family's shared pieces (how its models are trained, searched or rebuilt from a
finished run); the experiments under `dlclassics.experiments` call them and keep only their own idea.
This layer sits above the run session (`dlclassics.runs`) and below the experiments.
"""

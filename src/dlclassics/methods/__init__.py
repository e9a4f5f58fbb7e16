"""Algorithms as estimators (scikit-learn's contract: `__init__` stores the arguments, `fit` returns
self, learned attributes end in `_`): PCA, matrix factorisation. Shared by experiments; models/ holds
the torch modules that are trained by gradient."""

"""Algorithms the experiments share that are not networks trained by `engine.fit`: PCA (`pca`), the linear
autoencoder by alternating least squares (`linear_autoencoder`), matrix factorisation (`mf`),
hyperparameter searches (`sweep`), loss-landscape evaluation (`landscape`), Langevin samplers (`mcmc`),
S0's optimisers (`optim`) and topic-model measures (`topics`). Estimators follow
scikit-learn's contract: `__init__` stores the arguments, `fit` returns self, learned attributes end in `_`.
models/ holds the torch modules that are trained by gradient."""

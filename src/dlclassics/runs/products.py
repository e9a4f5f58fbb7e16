"""The files and metrics a producer writes that another run reads (`--from-run`), named once.

A producer writes these names; a consumer declares them in its `FROM_RUN = Upstream(...)` and reads
them through the checked `FinishedRun`. Neither imports the other: both import these constants.
(The VAE's snapshot files are named by `training.vae.snapshot_file`, shared by its producer and consumers.)
"""

from __future__ import annotations

from dlclassics.runs.folder import MODEL

# fashion-mlp (and fashion-mlp-enhanced): the parameters after every retraining epoch, for loss-landscape.
# {"parameters": [epochs + 1, P], "hidden": [...], "activation": ...}
TRAJECTORY = "trajectory.pt"

# energy-regressor, for mcmc-sampling: the trained regressor in S0's weights-file format (a plain state dict),
ENERGY_WEIGHTS = MODEL
# the PcaMixtureEnergy the data were drawn from (its state dict), the generated test set (S0's data format),
EXACT_ENERGY = "exact_energy.pt"
ENERGY_TEST_DATA = "energy_test_data.pt"
# and the metrics holding the standardisation of pixels the energy lives on.
PIXEL_STATS = ("pixel_mean", "pixel_std")

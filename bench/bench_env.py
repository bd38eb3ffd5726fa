"""Imported first by every bench script, before Ray or MLflow load: each script starts a local
Ray instance of its own and tracks into a scratch MLflow store, so Ray's token auth and usage
stats and MLflow's telemetry are off unless the caller has set them (as the tests set them).
bench/ is on ``sys.path`` when a script in it runs (bench/gpu/ adds it)."""

import os

for name, value in (("RAY_AUTH_MODE", "disabled"), ("RAY_USAGE_STATS_ENABLED", "0"), ("MLFLOW_DISABLE_TELEMETRY", "true")):
    os.environ.setdefault(name, value)

"""The paper's defence baselines beyond the loss family of `dss.objectives`: each module holds one
method (its data recipe, selection or training stage) and its config section is documented in
docs/baselines.md."""

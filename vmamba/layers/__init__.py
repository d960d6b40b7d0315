"""Building blocks shared by the model families (import the submodules directly)."""

"""Analyses of trained networks, estimator-style: __init__ stores parameters, fit() returns self,
results end in an underscore."""

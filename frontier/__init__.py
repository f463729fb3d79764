"""Dedicated baselines (one plain network per fixed λ, fixed-β TRADES) and Pareto tools.

The sweeps and the SA–RA frontier metrics live here; they build on ``oat``'s trainer and
evaluator.
"""

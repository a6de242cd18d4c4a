"""Distributed meta-training on Ray (extra ``[ray]``).

Workers are Ray actors that own their envs, tasks and optimizee copies; each outer step they receive
phi, compute meta-gradients on their share of the tasks and return them; the driver averages and
steps phi. Ray is imported only in this package.
"""

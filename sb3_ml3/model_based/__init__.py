"""Model-based ML3 (paper Sec. III.B.1, Algorithms 3 and 5) and RL loss shaping (Sec. IV.B.3-4).

Policies are optimised through differentiable dynamics (a learned model or an env's exact torch
dynamics); the baselines here are the task loss through the same dynamics, iLQR trajectory
optimisation and behavioural cloning.
"""

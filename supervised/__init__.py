"""Supervised ML3 (paper Sec. III.A, Algorithms 1 and 2), installed as ``sb3_ml3.supervised``."""
